#!/usr/bin/env bash
# The main job: SSOD vs vanilla fine-tuning on the built-in benchmark, on CPU (it prints an ETA; minutes
# on 2 cores), printing the paper-style table. Sets up ./.venv on first use.
#   bash scripts/demo.sh                 # results in ./output/demo
#   bash scripts/demo.sh --quick         # every step on tiny sizes, seconds
#   bash scripts/demo.sh --backbone resnet18 --seed 1 --output output/demo-r18
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
timm-ssod demo "$@"

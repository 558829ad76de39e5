#!/usr/bin/env bash
# The test command: sets up ./.venv on first use, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python -m pytest -q "$@"

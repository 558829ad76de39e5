#!/usr/bin/env bash
# The test command: sets up ./.venv on first use, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# one worker per core, at most 4 (each test uses one torch thread; each worker holds its own torch);
# --dist loadfile keeps a file's tests, and its module-scoped fixtures, on one worker
workers=$(python -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')
python -m pytest -q -n "$workers" --dist loadfile "$@"

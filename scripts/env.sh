# Sourced by scripts/demo.sh and scripts/test.sh: make ./.venv with timm_ssod installed
# (editable, with the dev extra) unless it is already up to date, then activate it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.timm_ssod-installed"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$root[dev]"
    touch "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
export HF_HUB_DISABLE_TELEMETRY=1

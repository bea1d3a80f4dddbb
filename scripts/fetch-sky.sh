#!/usr/bin/env bash
# SkyPilot (from PyPI) in its own virtual environment, .cache/sky-venv: the launch tests check
# that SkyPilot itself reads the task files `galley launch` writes. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/sky-venv
if "$venv/bin/python" -c "import sky" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "skypilot==0.14.*"
"$venv/bin/python" -c "import sky; print('fetch-sky: skypilot', sky.__version__)"

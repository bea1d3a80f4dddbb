#!/usr/bin/env bash
# The PyTorch peer of the training and rollout benchmarks: torch, transformers, peft, gguf and
# accelerate from PyPI in bench/.venv-train (several GB, once); `scripts/torch-venv.sh trl` adds
# TRL 1.16 and datasets (scripts/bench-dpo.sh). Prints the Python to run the peers with:
# GALLEY_TORCH_PYTHON where it has the packages, else the venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(torch transformers peft gguf accelerate)
check="import torch, transformers, peft, gguf, accelerate"
if [ "${1:-}" = trl ]; then
    pkgs+=("trl==1.16.*" datasets)
    check+=", trl, datasets"
fi
py=${GALLEY_TORCH_PYTHON:-bench/.venv-train/bin/python}
if ! "$py" -c "$check" 2>/dev/null; then
    [ -x bench/.venv-train/bin/python ] || python3 -m venv bench/.venv-train >&2
    bench/.venv-train/bin/pip install --quiet "${pkgs[@]}" >&2
    py=bench/.venv-train/bin/python
fi
echo "$py"

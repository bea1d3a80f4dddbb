#!/usr/bin/env bash
# GRPO step anatomy: the share of a step spent in sandboxed reward plugins (goal < 1%), the
# same reward natively, and rollout tokens/s against transformers' generate in the same run.
# Uses the PyTorch venv of scripts/bench-train.sh (bench/.venv-train, built on first use) or
# GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/build-plugins.sh
py=${GALLEY_TORCH_PYTHON:-bench/.venv-train/bin/python}
if ! "$py" -c "import torch, transformers, gguf, accelerate" 2>/dev/null; then
    python3 -m venv bench/.venv-train
    bench/.venv-train/bin/pip install --quiet torch transformers peft gguf accelerate
    py=bench/.venv-train/bin/python
fi
cargo build --release -p galley-bench --bin grpo-bench
./target/release/grpo-bench --python "$py" "$@"

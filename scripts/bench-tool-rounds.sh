#!/usr/bin/env bash
# Multi-turn rollouts (GRPO with tools or an environment): galley resuming each turn from the
# KV cache the last one left, galley prefilling every round again, and transformers' generate
# prefilling every round again (TRL's tool loop on transformers), in the same run.
# Uses the PyTorch venv of scripts/bench-train.sh (bench/.venv-train, built on first use) or
# GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
py=${GALLEY_TORCH_PYTHON:-bench/.venv-train/bin/python}
if ! "$py" -c "import torch, transformers, gguf, accelerate" 2>/dev/null; then
    python3 -m venv bench/.venv-train
    bench/.venv-train/bin/pip install --quiet torch transformers peft gguf accelerate
    py=bench/.venv-train/bin/python
fi
cargo build --release -p galley-bench --bin tool-rounds-bench
./target/release/tool-rounds-bench --python "$py" "$@"

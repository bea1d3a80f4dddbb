#!/usr/bin/env bash
# DPO speed and memory: `galley train` vs TRL's DPOTrainer on SmolLM2-135M-Instruct, LoRA and
# full fine-tuning, the same preference pairs in the same order, same threads, same run. Uses
# the training venv (bench/.venv-train: torch, transformers, peft, gguf) and adds trl 1.16 and
# datasets to it on first use, or uses GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
py=${GALLEY_TORCH_PYTHON:-bench/.venv-train/bin/python}
if ! "$py" -c "import torch, transformers, peft, gguf, trl, datasets" 2>/dev/null; then
    [ -x bench/.venv-train/bin/python ] || python3 -m venv bench/.venv-train
    bench/.venv-train/bin/pip install --quiet torch transformers peft gguf "trl==1.16.*" datasets
    py=bench/.venv-train/bin/python
fi
cargo build --release -p galley -p galley-bench
./target/release/dpo-bench --python "$py" "$@"

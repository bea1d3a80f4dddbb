#!/usr/bin/env bash
# DPO speed and memory: `galley train` vs TRL's DPOTrainer on SmolLM2-135M-Instruct, LoRA and
# full fine-tuning, the same preference pairs in the same order, same threads, same run. Uses
# the training venv (scripts/torch-venv.sh trl: bench/.venv-train with trl 1.16 and datasets
# added on first use), or GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
py=$(scripts/torch-venv.sh trl)
cargo build --release -p galley -p galley-bench
./target/release/dpo-bench --python "$py" "$@"

#!/usr/bin/env bash
# Multi-turn rollouts (GRPO with tools or an environment): galley resuming each turn from the
# KV cache the last one left, galley prefilling every round again, and transformers' generate
# prefilling every round again (TRL's tool loop on transformers), in the same run.
# Uses the PyTorch venv of scripts/torch-venv.sh (bench/.venv-train, built on first use) or
# GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
py=$(scripts/torch-venv.sh)
cargo build --release -p galley-bench --bin tool-rounds-bench
./target/release/tool-rounds-bench --python "$py" "$@"

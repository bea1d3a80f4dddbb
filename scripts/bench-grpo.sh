#!/usr/bin/env bash
# GRPO step anatomy: the share of a step spent in sandboxed reward plugins (goal < 1%), the
# same reward natively, and rollout tokens/s against transformers' generate in the same run.
# Uses the PyTorch venv of scripts/torch-venv.sh (bench/.venv-train, built on first use) or
# GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/build-plugins.sh
py=$(scripts/torch-venv.sh)
cargo build --release -p galley-bench --bin grpo-bench
./target/release/grpo-bench --python "$py" "$@"

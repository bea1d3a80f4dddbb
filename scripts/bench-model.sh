#!/usr/bin/env bash
# Model speed: galley vs llama.cpp on SmolLM2-135M-Instruct Q4_1, pp256 and tg128, same
# threads, same run. Builds llama-cpp-python from source once
# (scripts/llama-venv.sh) and llama-bench (scripts/llama-cpp.sh). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/llama-venv.sh
scripts/llama-cpp.sh
cargo run --release -p galley-bench --bin model-bench "$@"

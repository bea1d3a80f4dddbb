#!/usr/bin/env bash
# Serving: galley serve vs llama.cpp's llama-server (continuous batching, one slot per client,
# the same GGUF and threads) at 1, 8 and 32 concurrent streaming clients: aggregate tokens/s
# and p50/p99 time to first token. Builds llama.cpp from the llama-cpp-python sdist once
# (scripts/llama-cpp.sh, ~6 minutes on 2 cores) into bench/.llama-cpp. Run it on an otherwise
# idle machine. (Without --llama-server, serve_bench.py measures llama-cpp-python's server.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/llama-cpp.sh
cargo build --release -p galley
python3 bench/serve_bench.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    bench/.venv-llama/bin/python --llama-server bench/.llama-cpp/bin/llama-server "$@"

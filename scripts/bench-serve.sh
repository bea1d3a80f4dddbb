#!/usr/bin/env bash
# Serving: galley serve vs llama.cpp's server (llama-cpp-python[server], the same GGUF and
# threads) at 1, 8 and 32 concurrent streaming clients: aggregate tokens/s and p50/p99 time to
# first token. Builds llama-cpp-python from source (PyPI sdist, ~5-10 minutes on 2 cores, once)
# into bench/.venv-llama. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/llama-venv.sh server
cargo build --release -p galley
python3 bench/serve_bench.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    bench/.venv-llama/bin/python "$@"

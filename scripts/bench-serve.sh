#!/usr/bin/env bash
# Serving: galley serve vs llama.cpp's server (llama-cpp-python[server], the same GGUF and
# threads) at 1, 8 and 32 concurrent streaming clients: aggregate tokens/s and p50/p99 time to
# first token. Builds llama-cpp-python from source (PyPI sdist, ~5-10 minutes on 2 cores, once)
# into bench/.venv-llama. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
if [ ! -x bench/.venv-llama/bin/python ] || ! bench/.venv-llama/bin/python -c "import llama_cpp.server, uvicorn" 2>/dev/null; then
    python3 -m venv bench/.venv-llama
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) bench/.venv-llama/bin/pip install --quiet "llama-cpp-python[server]==0.3.36"
fi
cargo build --release -p galley
python3 bench/serve_bench.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    bench/.venv-llama/bin/python "$@"

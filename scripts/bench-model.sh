#!/usr/bin/env bash
# Model speed: galley vs llama.cpp on SmolLM2-135M-Instruct Q4_1, pp256 and tg128, same
# threads, same run. Builds llama-cpp-python from source (PyPI sdist, ~5-10 minutes on 2
# cores, once) into bench/.venv-llama. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
if [ ! -x bench/.venv-llama/bin/python ] || ! bench/.venv-llama/bin/python -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv bench/.venv-llama
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) bench/.venv-llama/bin/pip install --quiet llama-cpp-python==0.3.36
fi
cargo run --release -p galley-bench --bin model-bench "$@"

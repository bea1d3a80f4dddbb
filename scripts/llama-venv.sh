#!/usr/bin/env bash
# The llama.cpp peer of the benchmarks: llama-cpp-python built from source (PyPI sdist,
# ~5-10 minutes on 2 cores, once) into bench/.venv-llama. `scripts/llama-venv.sh server`
# adds its OpenAI server (scripts/bench-serve.sh); without an argument, the library
# (scripts/bench-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
pkg="llama-cpp-python==0.3.36"
check="import llama_cpp"
if [ "${1:-}" = server ]; then
    pkg="llama-cpp-python[server]==0.3.36"
    check="import llama_cpp.server, uvicorn"
fi
# Built for the native CPU where that has AMX (these VMs report amx_tile), llama.cpp crashed in
# ggml_backend_amx_mul_mat on the first prompt, and its GGML_AMX_* options are ignored under
# GGML_NATIVE: so the instruction sets are named instead, AVX-512 where the CPU has it (Q4_1
# then multiplies with AVX-512 VNNI, the path galley's kernel takes too).
args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
if grep -q avx512f /proc/cpuinfo; then
    args+=" -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON"
fi
# A venv built otherwise (before this script named the sets) is rebuilt.
mark=bench/.venv-llama/galley-cmake-args
if [ -x bench/.venv-llama/bin/python ] && bench/.venv-llama/bin/python -c "$check" 2>/dev/null \
    && [ "$(cat "$mark" 2>/dev/null)" = "$args" ]; then
    exit 0
fi
python3 -m venv bench/.venv-llama
CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    bench/.venv-llama/bin/pip install --quiet --force-reinstall --no-cache-dir "$pkg"
echo "$args" > "$mark"

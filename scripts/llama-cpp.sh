#!/usr/bin/env bash
# llama.cpp's own tools as peers: llama-bench (bench-model.sh), llama-server with parallel
# slots (bench-serve.sh) and llama-lookup (prompt-lookup decoding, bench/lookup.rs), built from the llama.cpp tree vendored in the same llama-cpp-python
# sdist scripts/llama-venv.sh builds (so both peers run the same ggml), with the same
# instruction sets, into bench/.llama-cpp/bin. ~6 minutes on 2 cores, once; cmake and ninja
# come from PyPI into bench/.venv-llama.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llama-venv.sh
out=bench/.llama-cpp
args=$(cat bench/.venv-llama/galley-cmake-args)
if [ -x "$out/bin/llama-bench" ] && [ -x "$out/bin/llama-server" ] && [ -x "$out/bin/llama-lookup" ] \
    && [ "$(cat "$out/galley-cmake-args" 2>/dev/null)" = "$args" ]; then
    exit 0
fi
bench/.venv-llama/bin/pip install --quiet cmake ninja
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench/.venv-llama/bin/pip download --quiet --no-deps --no-binary llama-cpp-python \
    llama-cpp-python==0.3.36 -d "$work"
tar xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work"
src="$work/llama_cpp_python-0.3.36/vendor/llama.cpp"
export PATH="$PWD/bench/.venv-llama/bin:$PATH"
# No web UI (it would be downloaded) and no TLS: the peers only serve loopback benchmarks.
# shellcheck disable=SC2086
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release $args \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DBUILD_SHARED_LIBS=OFF > "$work/cmake.log"
cmake --build "$work/build" --target llama-bench llama-server llama-lookup -j"$(nproc)" > "$work/build.log"
mkdir -p "$out/bin"
cp "$work/build/bin/llama-bench" "$work/build/bin/llama-server" "$work/build/bin/llama-lookup" "$out/bin/"
echo "$args" > "$out/galley-cmake-args"

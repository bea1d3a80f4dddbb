#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries (scripts/build-cuda.sh) and packs them, xz-
# compressed, into .gpu/ (git-ignored) for scripts/gpu-check.sh on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-cuda.sh -p galley-train -p galley-model --tests --examples
scripts/build-cuda.sh -p galley-train --test gpu --message-format=json 2> /dev/null |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])' > target/cuda/gpu-tests.path
rm -rf .gpu && mkdir -p .gpu
# Debug info is most of each binary (~200 MB); the GPU run needs none of it.
pack() { strip --strip-debug -o ".gpu/$2" "$1" && xz -T0 -6 ".gpu/$2"; }
pack "$(cat target/cuda/gpu-tests.path)" gpu-tests
pack target/cuda/release/examples/gpu-train gpu-train
pack target/cuda/release/examples/speed speed
ls -la .gpu

#!/usr/bin/env bash
# Builds galley's CUDA binaries, also on a machine with no GPU and no CUDA toolkit installed.
#
#     scripts/build-cuda.sh [CARGO ARGS...]     (default: the GPU test and benchmark binaries)
#
# With a CUDA toolkit installed (nvcc on PATH or CUDA_HOME set) it is a plain
# `cargo build --release --features cuda`. Without one it assembles a toolkit from PyPI's
# NVIDIA wheels (nvcc, its front end, NVVM, the runtime headers, CCCL: CUDA 13.0, which the
# H200 machines' driver runs) into .cache/cuda-kit, and links against empty stub libraries with
# the real SONAMEs; on the GPU machine the dynamic loader then finds the driver's libcuda and
# the toolkit's cuBLAS, cuRAND, NVRTC and NCCL (scripts/gpu-env.sh sets the paths).
#
# GALLEY_CUDA_CARGO=clippy (or check, test) runs another cargo command in the same setting.
# Target dir: target/cuda (the CPU builds keep theirs). A cold build takes ~30 minutes on two
# cores, most of it nvcc compiling candle's kernels for sm_90 once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
ver=${GALLEY_CUDA_VERSION:-13.0.88}

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc > /dev/null; then
    kit=$root/.cache/cuda-kit
    if [ ! -x "$kit/nvidia/cu13/bin/nvcc" ]; then
        mkdir -p "$kit/wheels"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$kit/wheels" \
            --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
            "nvidia-cuda-nvcc==$ver" "nvidia-cuda-crt==$ver" "nvidia-nvvm==$ver" \
            "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
        for w in "$kit"/wheels/*.whl; do
            python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$kit"
        done
        chmod +x "$kit"/nvidia/cu13/bin/* "$kit"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
    fi
    export CUDA_HOME=$kit/nvidia/cu13
    export PATH=$CUDA_HOME/bin:$PATH
    # The stubs: empty shared objects with the SONAMEs the real libraries have, so the
    # binaries record the right DT_NEEDED entries. Unresolved symbols are left to the
    # dynamic loader on the GPU machine.
    stubs=$kit/stubs
    if [ ! -f "$stubs/libcudart.so" ]; then
        mkdir -p "$stubs"
        echo > "$stubs/empty.c"
        for l in cuda:1 cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13 nccl:2; do
            n=${l%%:*} v=${l##*:}
            cc -shared -o "$stubs/lib$n.so" -Wl,-soname,"lib$n.so.$v" "$stubs/empty.c"
        done
    fi
    [ -e "$CUDA_HOME/lib64" ] || ln -s lib "$CUDA_HOME/lib64"
    export RUSTFLAGS="${RUSTFLAGS:-} -L $stubs -L $CUDA_HOME/lib -C link-arg=-Wl,--unresolved-symbols=ignore-all"
fi

if [ $# -eq 0 ]; then
    set -- -p galley-train -p galley-model -p galley-bench --tests --bins --examples
fi
exec cargo "${GALLEY_CUDA_CARGO:-build}" --release --features galley-model/cuda,galley-train/cuda "$@"

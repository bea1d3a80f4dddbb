#!/usr/bin/env bash
# The GPU checks of issue 19, as one run on a machine with an NVIDIA GPU and no Rust toolchain:
# the CUDA training tests, the decode speed, the training benchmark and its PyTorch peer.
#
#     scripts/gpu-pack.sh          # here: builds (scripts/build-cuda.sh) and packs .gpu/
#     scripts/gpu-check.sh [OUT]   # there: runs what .gpu/ holds, logs into OUT
#
# STEPS (default: all of them but profile, in this order) picks what runs, to spend a short
# lease on what changed: tests (the GPU tests, ~3 min), train (the training benchmark, ~2.5),
# unfused (it again on candle's composites instead of the fused CUDA ops), long (8k tokens
# through the fused attention), peer (PyTorch, same shapes), speed (decode, ~1.5),
# speed-gemma (the same for Gemma 3 270M's shape: sliding layers, the unfused step), gemma
# (training Gemma 3 1B's shape: full and LoRA at 2,048 tokens, LoRA at 8,192), profile
# (GALLEY_CUDA_PROFILE=1: the 1.7B shape's step kernel by kernel, full and LoRA, and the
# decode replays, through the CUPTI the machine's PyTorch carries; ~2.5). The default takes
# ~14 minutes, more than one 10-minute command: a 15-minute lease runs
# `STEPS="tests train profile"` first (PyTorch's figures are an earlier lease's, on the same
# kind of machine), then `STEPS="speed unfused"` if time is left.
#
# The binaries were linked against stub libraries (scripts/build-cuda.sh); the dynamic loader
# finds the driver's libcuda and the toolkit libraries that the machine's Python packages carry.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu-out}}
mkdir -p "$out" /tmp/gpu-bin
for f in .gpu/*.xz; do
    # Python's lzma: the GPU machine's image has Python, not necessarily xz.
    b=/tmp/gpu-bin/$(basename "$f" .xz)
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$b"
    chmod +x "$b"
done
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("nvidia/*/lib", "nvidia/*/lib64", "nvidia/cu13/lib"):
        for d in glob.glob(os.path.join(sp, pat)):
            dirs.add(d)
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:$libs:${LD_LIBRARY_PATH:-}"
# The stubs gave the binaries no DT_NEEDED entries (the linker drops libraries that resolve
# nothing), so the real libraries are preloaded.
pre=
for lib in libcuda.so.1 libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libcurand.so.10 libnvrtc.so.13; do
    f=
    for d in ${LD_LIBRARY_PATH//:/ } /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -e "$d/$lib" ] && { f=$d/$lib; break; }
    done
    [ -n "$f" ] || f=$(find /usr /opt -name "$lib" -print -quit 2> /dev/null)
    echo "$lib: ${f:-not found}" >> "$out/gpu.txt"
    [ -n "$f" ] && pre=$pre:$f
done
export GALLEY_PRELOAD=${pre#:}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$out/gpu.txt"
cat "$out/gpu.txt"
step() { # name, seconds, command...
    local name=$1 secs=$2
    shift 2
    echo "== $name"
    local t0=$SECONDS
    timeout "$secs" "$@" > "$out/$name.log" 2>&1
    echo "rc=$? in $((SECONDS - t0)) s" | tee -a "$out/$name.log"
    tail -n 40 "$out/$name.log"
}
steps=" ${STEPS:-tests train unfused long peer speed} "
want() { [[ "$steps" == *" $1 "* ]]; }
want tests && step tests 180 env LD_PRELOAD="$GALLEY_PRELOAD" /tmp/gpu-bin/gpu-tests --test-threads=1 --nocapture
want train && step train 150 env LD_PRELOAD="$GALLEY_PRELOAD" /tmp/gpu-bin/gpu-train
# The same benchmark on candle's composites instead of the fused CUDA ops (RMS norm, RoPE,
# SiLU gate, cross-entropy): their effect, measured in the same lease.
want unfused && step train-unfused 150 env LD_PRELOAD="$GALLEY_PRELOAD" GALLEY_CUDA_FUSED=0 /tmp/gpu-bin/gpu-train
# 8,192 tokens of the 1.7B shape: the fused attention's memory (the dense path would keep
# 96 GiB of scores).
want long && step train-long 150 env LD_PRELOAD="$GALLEY_PRELOAD" /tmp/gpu-bin/gpu-train --long
want gemma && step train-gemma 150 env LD_PRELOAD="$GALLEY_PRELOAD" /tmp/gpu-bin/gpu-train --gemma
want peer && step peer 130 env PYTHONUNBUFFERED=1 python3 bench/gpu_train_peer.py
want gemma && step peer-gemma 130 env PYTHONUNBUFFERED=1 python3 bench/gpu_train_peer.py --gemma
want speed && step speed 80 env LD_PRELOAD="$GALLEY_PRELOAD" GALLEY_SPEED_GPU_ONLY=1 /tmp/gpu-bin/speed
want speed-gemma && step speed-gemma 100 env LD_PRELOAD="$GALLEY_PRELOAD" GALLEY_SPEED_GPU_ONLY=1 GALLEY_SPEED_SHAPE=gemma3-270m /tmp/gpu-bin/speed
want profile && step train-profile 120 env LD_PRELOAD="$GALLEY_PRELOAD" GALLEY_CUDA_PROFILE=1 /tmp/gpu-bin/gpu-train
want profile && step speed-profile 100 env LD_PRELOAD="$GALLEY_PRELOAD" GALLEY_CUDA_PROFILE=1 GALLEY_SPEED_GPU_ONLY=1 /tmp/gpu-bin/speed

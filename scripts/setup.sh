#!/usr/bin/env bash
# Installs what the build and the tests need from Debian: when rustup has no wasm32-wasip2
# target, Debian's wasm-capable Rust (it builds std for wasm from source), wasm-ld and
# wasi-libc; and always docker-registry, the OCI registry the OCI interop tests push to, and
# the DejaVu font the training loss plots label their axes with; and g++, which compiles
# galley's CUDA kernel sources for the CPU in tests (galley-cuda-emu).
# Idempotent: does nothing when everything is present.
set -euo pipefail

packages=(docker-registry fonts-dejavu-core g++)
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "setup: rustup has wasm32-wasip2; no Debian wasm toolchain needed"
else
    packages+=(rustc-web cargo-web rust-web-src libstd-rust-web-dev clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: everything present"
    exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

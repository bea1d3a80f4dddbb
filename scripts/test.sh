#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the wasm toolchain and docker-registry
# (Debian packages) if needed, fetches the SmolLM2 test model and the training data, builds galley and every
# plugin from source, then runs all tests: the runtime's (every plugin kind, the
# hostile-plugin suite, bad input), the registry's, the model's (parity with transformers,
# generation), the trainer's (gradient checks, data, optimizers), galley's CUDA kernels on the
# CPU emulation (galley-cuda-emu: every kernel against its definition), the end-to-end CLI tests
# (training runs included), the plugins' own unit tests, and the SDK's
# documentation examples. Formatting is checked first, clippy (warnings are errors) before
# the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# A fresh machine gains nothing from incremental compilation, and its files were gigabytes of
# the disk a CI machine ran out of. (Set CARGO_INCREMENTAL=1 to keep it while iterating.)
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== formatting (host and plugin workspaces)"
cargo fmt --all --check
cargo fmt --manifest-path plugins/Cargo.toml --all --check

scripts/setup.sh
scripts/fetch-models.sh
scripts/fetch-data.sh
scripts/fetch-bfcl.sh .cache/eval-data
scripts/build-plugins.sh
scripts/fetch-sky.sh
# The launch tests then require SkyPilot to read galley's task files (no silent skip here).
export GALLEY_SKY_PYTHON="$PWD/.cache/sky-venv/bin/python"

echo "== lints (host and plugin workspaces)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --manifest-path plugins/Cargo.toml --target-dir target/plugins-native --workspace --all-targets -- -D warnings

echo "== host workspace"
# (Model tests serialise themselves: candle's thread pool spin-waits.)
cargo test --workspace

echo "== plugin logic, natively"
cargo test --manifest-path plugins/Cargo.toml --target-dir target/plugins-native -p math-answer -p function-call -p jsonl-chat -p calculator -p wordle -p wordle-sft --lib

echo "== SDK documentation examples"
cargo test --manifest-path sdk/rust/Cargo.toml --target-dir target/sdk-native --all-features --doc

echo "test.sh: all passed in $(( $(date +%s) - start ))s"

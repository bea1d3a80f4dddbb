#!/usr/bin/env bash
# Plugin benchmark: calls/s of the math-answer reward as a WASM plugin vs the same source
# compiled natively, instantiate time, load from the compiled cache, cold compile. Run it on
# an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-plugins.sh
cargo run --release -p galley-bench --bin plugin-bench
cargo run --release -p galley-bench --bin languages-bench
cargo run --release -p galley-bench --bin registry-bench

#!/usr/bin/env bash
# Builds the galley binary and, with it, every plugin under plugins/ (first-party, the
# Python and JavaScript examples, and the test-only hostile ones) into target/plugins/. These
# are this repository's own sources, so they opt into one shared target dir (target/wasm) and
# the standard library for wasm is compiled once; `galley plugin build` otherwise gives each
# plugin a target dir of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p galley ${GALLEY_CARGO_FLAGS:-}
profile=debug
case " ${GALLEY_CARGO_FLAGS:-} " in *" --release "*) profile=release ;; esac
export GALLEY_WASM_TARGET_DIR="$PWD/target/wasm"
# componentize-py and componentize-js are installed here on first use.
export GALLEY_TOOLCHAIN_DIR="${GALLEY_TOOLCHAIN_DIR:-$PWD/target/toolchains}"
./target/$profile/galley plugin build -o target/plugins \
    plugins/math-answer plugins/format plugins/length-penalty \
    plugins/jsonl-chat plugins/arith plugins/exact-match plugins/curriculum plugins/preference plugins/tiny-lm plugins/early-stop plugins/function-call plugins/bfcl-prompts plugins/calculator plugins/wordle \
    plugins/testing/hostile-reward plugins/testing/hostile-loader \
    plugins/testing/hostile-evaluator plugins/testing/hostile-recipe plugins/testing/hostile-tool plugins/testing/hostile-env \
    plugins/examples/math-answer-py plugins/examples/math-answer-js plugins/examples/math-answer-c \
    plugins/testing/hostile-py plugins/testing/hostile-js plugins/testing/reading-c plugins/testing/tools-loader-py plugins/testing/tools-loader-js plugins/testing/tools-py plugins/testing/tools-js plugins/testing/env-py

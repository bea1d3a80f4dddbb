#!/usr/bin/env bash
# galley's main job: one run that mixes two first-party recipes from the registry built into
# galley (`curriculum`: SFT warm-up -> GRPO until a target reward -> evaluation; `preference`:
# DPO -> evaluation) on SmolLM2-135M-Instruct, on a laptop CPU: progress per stage, the scores
# before and after, and a run folder with run.json, adapters, merged models and plots.
# Arguments go to `galley run` (e.g. `--set stage.grpo.training.max_steps=30`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p galley
scripts/fetch-models.sh
scripts/fetch-data.sh
GALLEY_EVAL_DATA=$PWD/.cache/eval-data scripts/fetch-eval-data.sh
galley=$PWD/target/release/galley
cd examples/run
$galley plugin install galley/curriculum galley/preference galley/arith galley/math-answer galley/format
$galley plan quickstart.yaml > /dev/null   # resolve and verify every plugin first
rm -rf runs/quickstart
$galley run quickstart.yaml "$@"

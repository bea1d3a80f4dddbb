#!/usr/bin/env bash
# `galley eval` against lm-evaluation-harness 0.4.13 (HF backend, f32) on SmolLM2-135M-Instruct
# and the same data files: per-request log-likelihoods, per-document grades, documents/s and
# peak memory (bench/eval_parity.py). Builds a venv with torch, transformers, gguf and lm_eval
# from PyPI into bench/.venv-eval (a few GB, once). Run it on an otherwise idle machine.
# Usage: scripts/bench-eval.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
export GALLEY_EVAL_DATA=${GALLEY_EVAL_DATA:-$PWD/.cache/eval-data}
scripts/fetch-eval-data.sh "$GALLEY_EVAL_DATA"
py=${GALLEY_EVAL_PYTHON:-bench/.venv-eval/bin/python}
if ! "$py" -c "import lm_eval, torch, transformers, gguf, accelerate" 2>/dev/null; then
    python3 -m venv bench/.venv-eval
    bench/.venv-eval/bin/pip install --quiet torch transformers gguf accelerate "lm_eval==0.4.13"
    py=bench/.venv-eval/bin/python
fi
cargo build --release -p galley
"$py" bench/eval_parity.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$GALLEY_EVAL_DATA" bench/out/eval "$@"

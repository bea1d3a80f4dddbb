#!/usr/bin/env bash
# Data parity with TRL: for each of TRL's dataset types in both forms, the input ids and loss
# masks `galley train --tokenize-only` builds equal those TRL's own trainers build from the
# same rows (SmolLM2's tokenizer and chat template); and KTO's loss, KL point and gradients
# equal TRL's KTOTrainer's over four SGD steps of a tiny model (to 1e-5).
# Uses bench/.venv-eval (torch, transformers, gguf; trl and datasets added on first use) or
# GALLEY_TRL_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
py=${GALLEY_TRL_PYTHON:-bench/.venv-eval/bin/python}
if ! "$py" -c "import torch, transformers, gguf, trl, datasets" 2>/dev/null; then
    [ -x bench/.venv-eval/bin/python ] || python3 -m venv bench/.venv-eval
    bench/.venv-eval/bin/pip install --quiet torch transformers gguf accelerate "trl==1.16.*" datasets
    py=bench/.venv-eval/bin/python
fi
cargo build --release -p galley
"$py" bench/trl_parity.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

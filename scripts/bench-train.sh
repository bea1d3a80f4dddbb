#!/usr/bin/env bash
# Training speed and memory: galley vs PyTorch + transformers + peft on SmolLM2-135M, full
# fine-tuning, LoRA and QLoRA, batch 4 x 256, same data, same threads, same run; then checks
# that peft loads a galley LoRA adapter and agrees with galley's merged model. Builds a venv
# with torch, transformers, peft and gguf from PyPI into bench/.venv-train (scripts/torch-venv.sh, once),
# or uses GALLEY_TORCH_PYTHON. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
py=$(scripts/torch-venv.sh)
cargo build --release -p galley-bench --bin train-bench
cargo build --release -p galley
./target/release/train-bench --python "$py" "$@"

echo "== peft reads galley's adapter"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/release/galley train --json \
    model.path=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    data.train.path=.cache/data/alpaca_en_demo.json data.train.limit=40 data.max_length=128 \
    training.method=lora training.max_steps=3 training.learning_rate=1e-3 \
    training.save_merged=true training.output_dir="$tmp/run" \
    'peft.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]' > /dev/null
"$py" bench/peft_check.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf "$tmp/run/adapter" "$tmp/run/model"

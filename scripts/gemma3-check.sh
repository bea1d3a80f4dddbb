#!/usr/bin/env bash
# llama.cpp computes from galley's Gemma 3 GGUF export what transformers computes from the
# source: the tiny random Gemma 3 of galley-model's tests (a 4-token sliding window over 11
# ids, a local and a global layer; its score scale set to the one llama.cpp derives) scored by
# transformers from the HF folder (scripts/torch-venv.sh) and by llama.cpp (llama-cpp-python from
# source, scripts/llama-venv.sh) from `galley export --outtype f32`; bench/gemma3_logits.py
# prints the largest difference and fails past 1e-3 of the largest logit. It checks what the
# Rust tests cannot hold llama.cpp to: its tensor names, the norms' stored `1 + weight`, and
# the sliding layers, window and RoPE bases as `gemma3.*` keys. Not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llama-venv.sh
torch=$(scripts/torch-venv.sh)
cargo build -q -p galley
out=target/gemma3-check
rm -rf $out && mkdir -p $out/hf
src=host/model/tests/fixtures/tiny/gemma3
cp $src/model.safetensors $src/tokenizer.json $out/hf/
python3 - "$src/config.json" "$out/hf/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["query_pre_attn_scalar"] = c["head_dim"]
json.dump(c, open(sys.argv[2], "w"))
EOF
./target/debug/galley export $out/hf -o $out/gemma3.gguf --outtype f32
$torch bench/gemma3_logits.py transformers $out/hf $out/transformers.json 2>/dev/null
bench/.venv-llama/bin/python bench/gemma3_logits.py llama $out/gemma3.gguf $out/llama.json 2>/dev/null
python3 bench/gemma3_logits.py compare $out/transformers.json $out/llama.json

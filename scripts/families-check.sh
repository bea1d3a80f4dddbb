#!/usr/bin/env bash
# llama.cpp computes from galley's Gemma 3, Gemma 2 and SmolLM3 GGUF exports what transformers
# computes from the source: galley-model's tiny random Gemma 3 and Gemma 2 (a 4-token sliding
# window over 11 ids, a local and a global layer; their score scale set to the one llama.cpp
# derives; Gemma 2's scores and logits soft-capped at 2 and 3) and SmolLM3 (four layers, the
# fourth without RoPE) scored by transformers from the HF folder
# (scripts/torch-venv.sh) and by llama.cpp (llama-cpp-python from source,
# scripts/llama-venv.sh) from `galley export --outtype f32`; bench/family_logits.py prints the
# largest difference and fails past 1e-3 of the largest logit. It checks what the Rust tests
# cannot hold llama.cpp to: its tensor names, the norms' stored `1 + weight`, the sliding
# layers, window and RoPE bases as `gemma3.*` keys, Gemma 2's caps as `gemma2.*` keys,
# SmolLM3's Q/K rows in llama.cpp's order and its NoPE layers. Then transformers reads
# galley's HF export of each (`galley export` to a folder) to the source's logits. Not part
# of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llama-venv.sh
torch=$(scripts/torch-venv.sh)
cargo build -q -p galley
for name in gemma3 gemma2 smollm3; do
    out=target/families-check/$name
    rm -rf $out && mkdir -p $out/hf
    src=host/model/tests/fixtures/tiny/$name
    cp $src/model.safetensors $src/tokenizer.json $out/hf/
    python3 - "$src/config.json" "$out/hf/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
if c["model_type"].startswith("gemma"):
    c["query_pre_attn_scalar"] = c["head_dim"]
json.dump(c, open(sys.argv[2], "w"))
PY
    ./target/debug/galley export $out/hf -o $out/$name.gguf --outtype f32
    $torch bench/family_logits.py transformers $out/hf $out/transformers.json 2>/dev/null
    bench/.venv-llama/bin/python bench/family_logits.py llama $out/$name.gguf $out/llama.json 2>/dev/null
    echo -n "$name, llama.cpp on galley's GGUF vs transformers: "
    python3 bench/family_logits.py compare $out/transformers.json $out/llama.json
    ./target/debug/galley export $out/hf -o $out/exported
    $torch bench/family_logits.py transformers $out/exported $out/exported.json 2>/dev/null
    echo -n "$name, transformers on galley's HF export vs on the source: "
    python3 bench/family_logits.py compare $out/transformers.json $out/exported.json
done

#!/usr/bin/env bash
# Embeddings: galley serve's /v1/embeddings vs llama.cpp's llama-server --embeddings on the
# same GGUF (SmolLM2-135M-Instruct Q4_1), and vs sentence-transformers on the same weights in
# f32 (the GGUF exported by galley to an HF folder in .cache/models/smollm2-135m-f32), 256
# paragraphs in requests of 32 from 4 clients, last-token pooling, normalized. Needs
# scripts/fetch-data.sh's alpaca file, llama.cpp's tools (scripts/llama-cpp.sh, ~6 minutes
# once) and the PyTorch venv with sentence-transformers (installed into it here). Run it on an
# otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
scripts/llama-cpp.sh
py=$(scripts/torch-venv.sh)
# Without its pins: sentence-transformers 6.0 asks for huggingface-hub < 2, which would move the
# venv's transformers (the other benchmarks' peer) back a release; it runs on the newer one.
"$py" -c "import sentence_transformers" 2>/dev/null || {
    "$py" -m pip install --quiet scikit-learn scipy
    "$py" -m pip install --quiet --no-deps "sentence-transformers==6.0.1"
}
cargo build --release -p galley
hf=.cache/models/smollm2-135m-f32
[ -f "$hf/model.safetensors" ] || target/release/galley export .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$hf"
python3 bench/embed_bench.py target/release/galley .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --llama-server bench/.llama-cpp/bin/llama-server --hf "$hf" --torch-python "$py" "$@"

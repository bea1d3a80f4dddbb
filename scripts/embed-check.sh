#!/usr/bin/env bash
# llama.cpp reads galley's embedding GGUFs: the tiny Qwen3-Embedding- and EmbeddingGemma-shaped
# sentence-transformers folders exported by `galley export`, served by llama.cpp's
# llama-server --embeddings, against sentence-transformers' vectors (bench/embed_gguf_check.py).
# Builds llama.cpp's tools once (scripts/llama-cpp.sh, ~6 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llama-cpp.sh
cargo build --release -p galley
python3 bench/embed_gguf_check.py target/release/galley bench/.llama-cpp/bin/llama-server

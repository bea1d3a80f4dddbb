#!/usr/bin/env bash
# llama.cpp runs what `galley export` writes: SmolLM2-135M-Instruct (the f32 HF checkpoint
# scripts/bench-eval.sh makes from the GGUF, else the GGUF itself) exported to GGUF in f32,
# f16, q8_0, q4_0 and q4_1; each quantized export compared tensor by tensor with llama.cpp's own
# quantizer run on galley's f32 export (bench/gguf_same.py), and each export loaded by llama.cpp
# (llama-cpp-python from source, scripts/llama-venv.sh) and scored against `galley serve` on
# the source (bench/gguf_check.py); and a random PEFT adapter (bench/make_adapter.py) exported
# as a llama.cpp LoRA GGUF, loaded over the f32 export, against galley serving the adapter;
# and a SentencePiece vocabulary's export tokenized by llama.cpp (bench/gguf_spm.py). Not part
# of the test command: it builds llama.cpp (~5-10 minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/llama-venv.sh
cargo build --release -q -p galley
src=.cache/hf-f32
[ -f $src/model.safetensors ] || src=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
out=target/gguf-check
mkdir -p $out
for t in f32 f16 q8_0 q4_0 q4_1; do
    ./target/release/galley export $src -o $out/smollm2-$t.gguf --outtype $t
done
.cache/tools-venv/bin/python bench/make_adapter.py $src $out/adapter
./target/release/galley export $out/adapter --base $src -o $out/lora-f32.gguf --outtype f32
for t in q8_0 q4_0 q4_1; do
    bench/.venv-llama/bin/python bench/gguf_same.py quantize $out/smollm2-f32.gguf $out/llama-cpp-$t.gguf $t 2>/dev/null
    .cache/tools-venv/bin/python bench/gguf_same.py compare $out/smollm2-$t.gguf $out/llama-cpp-$t.gguf
done
log=$out/serve.log
./target/release/galley serve -m $src --name m --adapter tuned=$out/adapter --port 0 > $log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
for _ in $(seq 100); do grep -q "http://127.0.0.1:" $log && break; sleep 0.2; done
url=$(grep -o "http://127.0.0.1:[0-9]*" $log | head -1)
bench/.venv-llama/bin/python bench/gguf_check.py "$url" $out/smollm2-{f32,f16,q8_0,q4_0,q4_1}.gguf \
    $out/smollm2-f32.gguf+$out/lora-f32.gguf $out/smollm2-f32.gguf+none
# A SentencePiece vocabulary (Llama 2's, as transformers keeps it) exported by the e2e test,
# tokenized by llama.cpp: its own test texts must give its own ids.
scripts/fetch-data.sh > /dev/null
GALLEY_KEEP_SPM_GGUF="$PWD/$out/spm.gguf" cargo test -q -p galley-e2e --test export \
    a_sentencepiece_vocabulary_exports_as_llama_cpps_llama_tokenizer > /dev/null
bench/.venv-llama/bin/python bench/gguf_spm.py $out/spm.gguf .cache/llama-vocab/ggml-vocab-llama-spm.gguf 2>/dev/null

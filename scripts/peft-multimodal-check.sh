#!/usr/bin/env bash
# A galley LoRA on a multimodal Gemma 3 read by peft: galley trains a LoRA (q, v, down
# projections, 4 steps) on galley-model's tiny Gemma3ForConditionalGeneration fixture (a tiny
# vision tower beside the language model), then bench/peft_check_multimodal.py loads the
# adapter with peft onto the multimodal model and compares its text-only logits with
# transformers' on galley's merged model. It checks what the Rust tests cannot hold peft to:
# that the adapter's keys and target pattern place every LoRA matrix where peft builds the
# language model's modules, and none in the vision tower. Not part of the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
torch=$(scripts/torch-venv.sh)
cargo build -q -p galley
out=target/peft-multimodal-check
rm -rf $out && mkdir -p $out/base
src=host/model/tests/fixtures/tiny/gemma3-multimodal
cp $src/model.safetensors $src/tokenizer.json $src/config.json $out/base/
python3 - "$out/train.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(48):
        a, b = i % 7, (i * 3) % 5
        f.write(json.dumps({"prompt": f"add{a}and{b}:", "completion": f"{a + b}" + "ok" * (1 + i % 3)}) + "\n")
PY
cat > $out/sft.yaml <<'YAML'
model: {path: base}
data: {train: {path: train.jsonl}, max_length: 48}
training: {method: lora, output_dir: run, batch_size: 6, learning_rate: 2.0e-2, max_steps: 4, save_merged: true}
peft: {r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj, down_proj]}
YAML
(cd $out && ../debug/galley train -c sft.yaml > /dev/null)
$torch bench/peft_check_multimodal.py $out/base $out/run/adapter $out/run/model 2>&1 | grep -v -i warn

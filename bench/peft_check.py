"""Checks a galley LoRA run against the Python ecosystem: peft loads galley's adapter onto the
base model (transformers reading the same GGUF), and its logits equal those of galley's merged
model loaded by transformers. A key-name or layout mismatch would leave peft's LoRA B at zero
(logits equal the base's) or scale it wrongly (logits differ from the merge).

python bench/peft_check.py BASE.gguf RUN/adapter RUN/model"""

import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_path, adapter, merged = sys.argv[1:4]
torch.manual_seed(0)
ids = torch.randint(0, 49152, (1, 48))


def gguf():
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(base_path), gguf_file=os.path.basename(base_path), torch_dtype=torch.float32
    ).eval()


with torch.no_grad():
    base = gguf()(ids).logits
    peft_model = PeftModel.from_pretrained(gguf(), adapter).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "peft left LoRA B at zero: keys not loaded"
    with_adapter = peft_model(ids).logits
    merged_logits = AutoModelForCausalLM.from_pretrained(merged, torch_dtype=torch.float32).eval()(ids).logits
scale = base.abs().max().item()
d_base = (with_adapter - base).abs().max().item() / scale
d_merged = (with_adapter - merged_logits).abs().max().item() / scale
print(f"peft adapter vs base: {d_base:.2e} (must be > 0); peft adapter vs galley's merged model: {d_merged:.2e}")
assert d_base > 1e-4, "the adapter changed nothing"
assert d_merged < 1e-4, "galley's merged model disagrees with peft's reading of its adapter"
print("peft-check: ok")

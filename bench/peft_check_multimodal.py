"""Checks a galley LoRA on a multimodal Gemma 3 (Gemma3ForConditionalGeneration, as the 4B and
up are published) against the Python ecosystem: peft loads galley's adapter onto the
multimodal base, attaches LoRA to the language model's modules only (none to the vision
tower), and its text-only logits equal those of galley's merged model, a Gemma3ForCausalLM,
loaded by transformers.

python bench/peft_check_multimodal.py BASE_DIR RUN/adapter RUN/model"""

import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

base_dir, adapter, merged = sys.argv[1:4]
ids = torch.tensor([[1, 17, 42, 5, 99, 63, 2, 120, 7, 7, 31, 64, 80, 12]])


def base():
    return Gemma3ForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32).eval()


with torch.no_grad():
    plain = base()(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base(), adapter).eval()
    names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert names, "peft attached no LoRA modules"
    vision = [n for n in names if "vision_tower" in n or "multi_modal_projector" in n]
    assert not vision, f"peft attached LoRA to the vision tower: {vision[:3]}"
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b), "peft left LoRA B at zero: keys not loaded"
    with_adapter = peft_model(input_ids=ids).logits
    merged_logits = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(ids).logits
scale = plain.abs().max().item()
d_base = (with_adapter - plain).abs().max().item() / scale
d_merged = (with_adapter - merged_logits).abs().max().item() / scale
print(f"{len(names)} LoRA tensors, all in the language model")
print(f"peft adapter vs base: {d_base:.2e} (must be > 0); peft adapter vs galley's merged model: {d_merged:.2e}")
assert d_base > 1e-4, "the adapter changed nothing"
assert d_merged < 1e-4, "galley's merged model disagrees with peft's reading of its adapter"
print("peft-multimodal-check: ok")

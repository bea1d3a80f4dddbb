"""A random PEFT LoRA adapter for a checkpoint (r 8, alpha 16, on every attention and MLP
projection, seeded), large enough to move its log-likelihoods visibly: what
scripts/gguf-check.sh exports as a llama.cpp LoRA GGUF. Usage: make_adapter.py MODEL_DIR OUT_DIR"""
import json, os, sys
import numpy as np
from safetensors.numpy import save_file

model, out = sys.argv[1:3]
cfg = json.load(open(os.path.join(model, "config.json")))
h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
hd = cfg.get("head_dim") or h // heads
kv = cfg.get("num_key_value_heads", heads) * hd
inter = cfg["intermediate_size"]
shapes = {"self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
          "self_attn.o_proj": (h, heads * hd), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
          "mlp.down_proj": (h, inter)}
r, rng, tensors = 8, np.random.default_rng(0), {}
for layer in range(cfg["num_hidden_layers"]):
    for name, (o, i) in shapes.items():
        key = f"base_model.model.model.layers.{layer}.{name}"
        tensors[key + ".lora_A.weight"] = (rng.standard_normal((r, i)) * 0.05).astype(np.float32)
        tensors[key + ".lora_B.weight"] = (rng.standard_normal((o, r)) * 0.05).astype(np.float32)
os.makedirs(out, exist_ok=True)
save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16,
           "target_modules": sorted(n.split(".")[-1] for n in shapes), "bias": "none"},
          open(os.path.join(out, "adapter_config.json"), "w"))

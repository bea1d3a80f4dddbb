"""PyTorch's side of `cargo run --release -p galley-model --example prefill`: transformers'
LlamaForCausalLM (SDPA attention, f32) on SmolLM2's GGUF dequantized once (bench/hf_f32.py),
one forward pass per batch shape with one row a quarter left-padded and only the last
position's logits (`logits_to_keep=1`), as the log-likelihood engines prefill a batch of
contexts. Prints one JSON object: shape -> best-of-3 seconds.

Usage: prefill_peer.py GGUF HF_DIR THREADS BxT [BxT ...]"""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from hf_f32 import hf_folder  # noqa: E402

gguf, hf_dir, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(hf_folder(gguf, hf_dir), dtype=torch.float32).eval()
out = {}
for shape in sys.argv[4:]:
    b, t = map(int, shape.split("x"))
    ids = torch.randint(0, model.config.vocab_size, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, : t // 4] = 0
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            best = min(best, time.perf_counter() - t0)
    out[shape] = best
print(json.dumps(out))

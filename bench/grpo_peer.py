"""PyTorch peer of bench/grpo_bench.rs's rollouts: transformers' `generate` on the same
SmolLM2-135M-Instruct (the GGUF, dequantized to f32 as galley's rollouts are), the same
prompts in the same order, PER_STEP prompts x GROUP samples a batch (left-padded, KV cache),
temperature sampling with nothing cut, the same token budget and threads. Prints one JSON line:
generated tokens/s and sequence-steps/s (rows x decode steps, which does not depend on how
long the sampled completions happen to be)."""

import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--prompts", required=True)
p.add_argument("--steps", type=int, required=True)
p.add_argument("--per-step", type=int, required=True)
p.add_argument("--group", type=int, required=True)
p.add_argument("--max-new", type=int, required=True)
p.add_argument("--temperature", type=float, required=True)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
d, f = os.path.dirname(a.model), os.path.basename(a.model)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
prompts = [json.loads(l)["prompt"] for l in open(a.prompts) if l.strip()]
eos = tok.eos_token_id
tokens = seq_steps = 0
secs = 0.0
for s in range(a.steps):
    batch = prompts[s * a.per_step : (s + 1) * a.per_step]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=a.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=a.max_new,
            num_return_sequences=a.group,
            pad_token_id=eos,
        )
    secs += time.perf_counter() - t0
    gen = out[:, enc["input_ids"].shape[1] :]
    steps = gen.shape[1]
    seq_steps += gen.shape[0] * steps
    for row in gen.tolist():
        n = row.index(eos) + 1 if eos in row else len(row)
        tokens += n
print(json.dumps({"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs, "seq_steps_per_s": seq_steps / secs}))

"""PyTorch peer of bench/train_bench.rs: the same model (SmolLM2-135M, whose GGUF transformers
reads and dequantizes to f32, or an HF folder in f32), the same token rows, AdamW (torch's default foreach implementation),
gradient clipping at 1.0, full fine-tuning or LoRA through peft. Prints one JSON line."""

import argparse
import json
import os
import resource
import time

import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["full", "lora"], required=True)
p.add_argument("--rows", required=True)
p.add_argument("--model", required=True)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--skip", type=int, default=0, help="positions without a loss at the start of each row")
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
rows = json.load(open(a.rows))
B, T = 4, len(rows[0]) - 1
if os.path.isdir(a.model):
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(a.model), gguf_file=os.path.basename(a.model), dtype=torch.float32
    )
model.config.use_cache = False
if a.mode == "lora":
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
losses, timed = [], 0.0
steps = len(rows) // B
for s in range(steps):
    batch = torch.tensor(rows[s * B : (s + 1) * B], dtype=torch.long)
    t0 = time.perf_counter()
    logits = model(input_ids=batch[:, :T]).logits
    labels = batch[:, 1:].clone()
    labels[:, : a.skip] = -100
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    if s == 0:
        # The first loss again in f64 from the same logits (after the backward pass freed its
        # graph, a few rows at a time, so the peak memory is not the f64 copy's): what an f32
        # loss is off by, torch's and galley's alike.
        flat, tgt = logits.detach().reshape(-1, logits.shape[-1]), labels.reshape(-1)
        nll = sum(
            torch.nn.functional.cross_entropy(flat[i : i + 64].double(), tgt[i : i + 64], reduction="sum").item()
            for i in range(0, flat.shape[0], 64)
        )
        first_f64 = nll / int((tgt != -100).sum())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    if s > 0:
        timed += time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": a.mode, "tokens_per_s": (steps - 1) * B * T / timed, "peak_rss_mb": peak, "losses": losses, "first_loss_f64": first_f64}))

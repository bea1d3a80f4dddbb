"""PyTorch peer of bench/tool_rounds.rs: the same multi-turn rollouts with transformers'
`generate` on every round's whole sequence, as TRL's tool loop runs when it generates with
transformers. Same model (SmolLM2-135M-Instruct's GGUF, dequantized to f32), the same prompt
and tool-turn token ids (read from the spec galley wrote), the same group size, turn budget
(end of sequence switched off: min_new_tokens = max_new_tokens), temperature and threads.
Prints one JSON line: seconds, tokens generated, tokens prefilled."""

import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, spec = sys.argv[1], json.load(open(sys.argv[2]))
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
d, f = os.path.dirname(path), os.path.basename(path)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
pad = 0
rows = [list(p) for p in spec["prompts"] for _ in range(spec["group"])]
turn, rounds, suffix = spec["turn"], spec["rounds"], spec["suffix"]


def generate(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=spec["temperature"],
            top_k=0,
            top_p=1.0,
            max_new_tokens=turn,
            min_new_tokens=turn,
            pad_token_id=pad,
        )
    return out[:, width:].tolist()


generate(rows[:1])  # warm, unmeasured
generated = prefilled = 0
t0 = time.perf_counter()
for r in range(rounds + 1):
    prefilled += sum(len(x) for x in rows)
    new = generate(rows)
    for x, n in zip(rows, new):
        generated += len(n)
        x.extend(n)
        if r < rounds:
            x.extend(suffix)
secs = time.perf_counter() - t0
print(json.dumps({"seconds": secs, "generated": generated, "prefilled": prefilled}))

"""The PyTorch peer of bench/dist_train.rs: SmolLM2-135M (transformers reads the GGUF and
dequantizes it to f32), full fine-tuning with AdamW and clipping at 1.0, one thread a process:
first one process alone, then two ranks under DistributedDataParallel (gloo on loopback, its
default buckets, all-reduce overlapped with autograd), BATCH x SEQ tokens a rank a step.
Prints one JSON line: the mean seconds of steps 2..N of each (rank 0's clock)."""

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM


def train(rank, world, port, a, out):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(a.model), gguf_file=os.path.basename(a.model), torch_dtype=torch.float32
    )
    model.config.use_cache = False
    model.train()
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    g = torch.Generator().manual_seed(rank)
    times = []
    for _ in range(a.steps):
        batch = torch.randint(0, 49152, (a.batch, a.seq + 1), generator=g)
        t0 = time.perf_counter()
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out["s"] = sum(times[1:]) / len(times[1:])
    if world > 1:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    res = {}
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(train, args=(1, 0, a, out), nprocs=1)
        res["one_s"] = out["s"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(train, args=(2, port, a, out), nprocs=2)
        res["ddp_s"] = out["s"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()

"""The PyTorch peer of bench/dist_bench.rs: torch.distributed's gloo all_reduce (sum) of f32
buffers across 2 processes (or --ranks N) on loopback; prints "FLOATS SECONDS" per size (best
of 3 after a warm-up, the slowest rank's time)."""

import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank, world, port, sizes, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for n in sizes:
        buf = torch.full((n,), float(rank + 1))
        dist.all_reduce(buf)
        best = float("inf")
        for _ in range(3):
            dist.barrier()
            t = time.perf_counter()
            dist.all_reduce(buf)
            best = min(best, time.perf_counter() - t)
        out[(rank, n)] = best
    dist.destroy_process_group()


def main():
    args = sys.argv[1:]
    world = 2
    if args[:1] == ["--ranks"]:
        world, args = int(args[1]), args[2:]
    sizes = [int(s) for s in args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(rank_main, args=(world, port, sizes, out), nprocs=world)
        for n in sizes:
            print(n, max(out[(r, n)] for r in range(world)))


if __name__ == "__main__":
    main()

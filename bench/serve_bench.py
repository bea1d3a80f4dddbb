"""Serving benchmark: `galley serve` vs llama.cpp's own `llama-server` (C++, continuous batching
over as many parallel slots as the most clients, `--llama-server PATH`) or, without it,
llama-cpp-python's server (one request at a time), on the same GGUF, the same threads, the same
prompts, in the same run.

At 1, 8 and 32 concurrent clients, each client sends streaming chat completions one after the
other (greedy, end-of-turn tokens banned through `logit_bias` so every answer is exactly
`--max-tokens` long on both servers); measured: aggregate completion tokens/s over the level's
wall time, and p50 / p99 time to first token (request sent -> first content chunk), and each
server's peak resident memory (VmHWM) after each level.

`--context N` puts about N words of filler before each prompt, different for every request (no
prompt cache helps): long contexts held by many clients at once, where the KV cache's size
(`--galley-args "--kv-cache-dtype f32"` against the f16 default) shows in memory and speed.

Usage: python bench/serve_bench.py GALLEY_BIN GGUF LLAMA_PYTHON [--llama-server PATH]
       [--threads 2] [--max-tokens 64]
(scripts/bench-serve.sh builds both and runs this.) Standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from loopback import free_port

PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France?",
    "Give me a tip for learning to cook.",
    "Name three colors and say why you like them.",
    "Explain what a prime number is.",
    "Describe a cat in a few words.",
    "What do plants need to grow?",
    "Tell me something about the moon.",
]


def wait_up(url, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return
        except Exception:
            time.sleep(0.5)
    sys.exit(f"{url} did not come up")


# Request fields beyond the defaults (--temperature, --logprobs).
EXTRA = {}
# Words of filler before each prompt (--context).
CONTEXT = 0
WORDS = ("river stone light garden paper window music winter forest candle harbor silver "
         "meadow engine letter bridge orchard lantern valley thunder").split()


def filler(seed):
    """About CONTEXT words, a different sequence for every seed (a request's own context)."""
    out, x = [], seed * 2654435761 % 4294967296 + 1
    for _ in range(CONTEXT):
        x = x * 1103515245 + 12345 & 0x7FFFFFFF
        out.append(WORDS[x % len(WORDS)])
    return " ".join(out)


def peak_mib(pid):
    """The process's peak resident memory so far, MiB (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def one(url, model, prompt, max_tokens, ban):
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True, "logit_bias": ban,
        **EXTRA,
    }).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    ttft, chunks = None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ch = json.loads(data)
            for c in ch.get("choices", []):
                if (c.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    return ttft if ttft is not None else time.perf_counter() - t0, chunks


def level(url, model, clients, per_client, max_tokens, ban):
    ttfts, tokens = [], []
    lock = threading.Lock()

    def client(i):
        for k in range(per_client):
            prompt = PROMPTS[(i + k) % len(PROMPTS)]
            if CONTEXT:
                prompt = f"{filler(clients * 1000 + i * per_client + k)}\n\n{prompt}"
            t, n = one(url, model, prompt, max_tokens, ban)
            with lock:
                ttfts.append(t)
                tokens.append(n)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]
    return {"clients": clients, "requests": len(ttfts), "tokens": sum(tokens), "wall_s": wall,
            "tok_per_s": sum(tokens) / wall, "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": p99}


def run(name, cmd, url, model, args, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_up(url, proc)
        # SmolLM2's end tokens (<|endoftext|> 0, <|im_end|> 2) banned: fixed-length answers.
        ban = {"0": -100, "2": -100}
        one(url, model, PROMPTS[0], 8, ban)  # warm-up
        out = []
        for c in args.clients:
            per = max(1, args.requests // c)
            r = level(url, model, c, per, args.max_tokens, ban)
            r["peak_mib"] = peak_mib(proc.pid)
            print(f"  {name:8} {c:>3} clients: {r['tok_per_s']:7.1f} tok/s   TTFT p50 {r['ttft_p50_s']*1000:7.0f} ms"
                  f"   p99 {r['ttft_p99_s']*1000:7.0f} ms   ({r['requests']} requests, {r['tokens']} tokens,"
                  f" {r['wall_s']:.1f} s; peak {r['peak_mib']:.0f} MiB)", flush=True)
            out.append(r)
        return out
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("galley")
    ap.add_argument("gguf")
    ap.add_argument("llama_python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=32, help="requests per level (at least one per client)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sample at this temperature instead of greedy, with llama.cpp's default "
                         "cuts sent to both servers: top-k 40, top-p 0.95, min-p 0.05")
    ap.add_argument("--logprobs", type=int, default=None,
                    help="ask for each token's log-probability and this many alternatives")
    ap.add_argument("--galley-args", default="", help="extra `galley serve` arguments, e.g. --dequantize")
    ap.add_argument("--skip-llama", action="store_true")
    ap.add_argument("--context", type=int, default=0,
                    help="words of filler before each prompt, different for every request")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary (scripts/llama-cpp.sh builds it)")
    args = ap.parse_args()
    global CONTEXT
    CONTEXT = args.context
    if args.temperature:
        EXTRA.update(temperature=args.temperature, top_k=40, top_p=0.95, min_p=0.05)
    if args.logprobs is not None:
        EXTRA.update(logprobs=True, top_logprobs=args.logprobs)

    port = free_port()
    g_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), CANDLE_NUM_THREADS=str(args.threads))
    print(f"galley serve ({args.threads} threads, max batch 32) {args.galley_args} {EXTRA or 'greedy'}:")
    g = run("galley", [args.galley, "serve", "-m", args.gguf, "--port", str(port), "--name", "m",
                       *args.galley_args.split()], g_url, "m", args, env)
    if args.skip_llama:
        return

    port = free_port()
    l_url = f"http://127.0.0.1:{port}"
    if args.llama_server:
        slots = max(args.clients)
        print(f"llama.cpp llama-server ({args.threads} threads, {slots} parallel slots, continuous batching):")
        # 512 context positions per slot: a prompt of ~30 tokens and its answer fit many times over
        # (with --context, room for its filler too).
        per_slot = 512 if not args.context else 2 * args.context + args.max_tokens + 256
        lcmd = [args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port),
                "-t", str(args.threads), "-tb", str(args.threads), "-np", str(slots),
                "-c", str(per_slot * slots), "-a", "m", "--no-webui"]
    else:
        print(f"llama.cpp server (llama-cpp-python, {args.threads} threads):")
        lcmd = [args.llama_python, "-m", "llama_cpp.server", "--model", args.gguf, "--host", "127.0.0.1",
                "--port", str(port), "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                "--n_ctx", "4096",
                # Queue concurrent requests instead of cutting the running one off (its default).
                "--interrupt_requests", "False"]
    l = run("llama", lcmd, l_url, "m", args)

    print("\n| clients | galley tok/s | llama.cpp tok/s | ratio | galley TTFT p50 / p99 (ms) | llama.cpp TTFT p50 / p99 (ms) | peak MiB galley / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for a, b in zip(g, l):
        print(f"| {a['clients']} | {a['tok_per_s']:.1f} | {b['tok_per_s']:.1f} | **{a['tok_per_s']/b['tok_per_s']:.2f}x** |"
              f" {a['ttft_p50_s']*1000:.0f} / {a['ttft_p99_s']*1000:.0f} | {b['ttft_p50_s']*1000:.0f} / {b['ttft_p99_s']*1000:.0f} |"
              f" {a['peak_mib']:.0f} / {b['peak_mib']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"galley": g, "llama_cpp": l, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()

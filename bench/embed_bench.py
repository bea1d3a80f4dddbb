"""Embeddings benchmark: `galley serve`'s `/v1/embeddings` against llama.cpp's `llama-server
--embeddings` on the same GGUF, and against sentence-transformers (PyTorch) on the same weights
in f32, in the same run, with the same threads and the same texts.

Texts: the `output` fields of `.cache/data/alpaca_en_demo.json` (scripts/fetch-data.sh), each
cut to `--chars` characters: paragraphs of ~20 to ~250 tokens, the documents a retrieval index
embeds. Pooling: the last token, normalized (Qwen3-Embedding's recipe; no embedding checkpoint
reaches this machine, so the backbone is the GGUF's model, and what is measured is the engine).

Measured for each server: `--texts` texts sent as requests of `--batch` texts by `--clients`
concurrent clients (texts/s and tokens/s over the wall time), then 32 one-text requests one after
the other (p50 latency: a query embedded at search time). sentence-transformers runs `encode`
over the same texts with `batch_size=--batch` (its own length sorting) after one warm-up batch.
Agreement: the cosine between galley's and llama.cpp's vector for each text (both from the GGUF),
and the largest difference between galley's and sentence-transformers' vectors (both f32).

Usage: python bench/embed_bench.py GALLEY_BIN GGUF --llama-server PATH [--hf F32_FOLDER
       --torch-python PY] [--texts 256] [--batch 32] [--clients 4] [--threads 2]
(scripts/bench-embed.sh builds and fetches what it needs and runs this.) Standard library only;
the PyTorch side runs in its own interpreter.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from loopback import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(url, body):
    req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def wait_up(url, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            post(url, {"model": "m", "input": "warm up"})
            return
        except Exception:
            time.sleep(0.5)
    sys.exit("server did not come up")


def texts(n, chars):
    data = json.load(open(os.path.join(ROOT, ".cache/data/alpaca_en_demo.json")))
    out = [d["output"].strip()[:chars] for d in data if d["output"].strip()]
    return out[:n]


def queries():
    data = json.load(open(os.path.join(ROOT, ".cache/data/alpaca_en_demo.json")))
    return [d["instruction"].strip() for d in data[-32:]]


def measure(url, docs, batch, clients):
    chunks = [(i, docs[i:i + batch]) for i in range(0, len(docs), batch)]
    vectors = [None] * len(docs)
    tokens = [0]
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if not chunks:
                    return
                start, chunk = chunks.pop(0)
            r = post(url, {"model": "m", "input": chunk, "encoding_format": "float"})
            with lock:
                tokens[0] += r.get("usage", {}).get("prompt_tokens", 0)
                for d in r["data"]:
                    vectors[start + d["index"]] = d["embedding"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = []
    for q in queries():
        t = time.perf_counter()
        post(url, {"model": "m", "input": q, "encoding_format": "float"})
        lat.append(time.perf_counter() - t)
    return {"wall_s": wall, "texts_per_s": len(docs) / wall, "tokens": tokens[0],
            "tokens_per_s": tokens[0] / wall, "query_p50_ms": statistics.median(lat) * 1000,
            "vectors": vectors}


def serve(name, cmd, url, args, docs, env):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_up(url, proc)
        r = measure(url, docs, args.batch, args.clients)
        print(f"  {name:22} {r['texts_per_s']:7.2f} texts/s  {r['tokens_per_s']:8.1f} tokens/s"
              f"  ({r['tokens']} tokens, {r['wall_s']:.1f} s)  one query p50 {r['query_p50_ms']:.1f} ms", flush=True)
        return r
    finally:
        proc.terminate()
        proc.wait()


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


ST_SCRIPT = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
import os, tempfile
folder, threads, batch, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
# sentence-transformers 6 wraps each text in the tokenizer's chat template when it has one (a
# chat model's system prompt and turn markers); an embedding model's folder has none, so the
# copy it reads here has none either: the texts go in as they are, as galley and llama.cpp take them.
plain = tempfile.mkdtemp()
for name in os.listdir(folder):
    if name != "tokenizer_config.json":
        os.symlink(os.path.abspath(os.path.join(folder, name)), os.path.join(plain, name))
cfg = json.load(open(os.path.join(folder, "tokenizer_config.json")))
cfg.pop("chat_template", None)
json.dump(cfg, open(os.path.join(plain, "tokenizer_config.json"), "w"))
folder = plain
docs = json.load(open(path))
t = Transformer(folder, max_seq_length=1024)
if t.tokenizer.pad_token is None:
    t.tokenizer.pad_token = t.tokenizer.eos_token
st = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode="lasttoken"),
                                  Normalize()], device="cpu")
st.encode(docs[:batch], batch_size=batch)
t0 = time.perf_counter()
v = st.encode(docs, batch_size=batch, convert_to_numpy=True)
wall = time.perf_counter() - t0
lat = []
for q in json.load(open(path + ".queries")):
    t1 = time.perf_counter()
    st.encode([q])
    lat.append(time.perf_counter() - t1)
lat.sort()
tokens = sum(len(t.tokenizer(d)["input_ids"]) for d in docs)
json.dump({"wall_s": wall, "tokens": tokens, "vectors": v.tolist(), "query_p50_ms": lat[len(lat) // 2] * 1000},
          open(path + ".out", "w"))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("galley")
    ap.add_argument("gguf")
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--hf", help="the same model as an f32 HF folder (galley export GGUF -o DIR)")
    ap.add_argument("--torch-python", help="a Python with torch and sentence-transformers")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--chars", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    docs = texts(args.texts, args.chars)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), CANDLE_NUM_THREADS=str(args.threads))
    print(f"{len(docs)} texts (<= {args.chars} chars), requests of {args.batch}, {args.clients} clients, "
          f"{args.threads} threads; last-token pooling, normalized")
    res = {}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    res["galley"] = serve("galley serve (GGUF)", [args.galley, "serve", "-m", args.gguf, "--port", str(port),
                          "--name", "m", "--pooling", "last"], url, args, docs, env)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # As many slots as a request has texts: llama-server runs each text as a task in a slot,
    # so its batches are as wide as galley's passes.
    slots = max(args.clients, args.batch)
    res["llama"] = serve("llama-server (GGUF)", [
        args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(args.threads), "-tb", str(args.threads), "--embeddings", "--pooling", "last",
        "-np", str(slots), "-c", str(1024 * slots), "-b", "2048", "-ub", "2048", "-a", "m",
        "--no-webui"], url, args, docs, env)

    if args.hf and args.torch_python:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        res["galley_f32"] = serve("galley serve (f32 HF)", [args.galley, "serve", "-m", args.hf, "--port",
                                  str(port), "--name", "m", "--pooling", "last"], url, args, docs, env)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "docs.json")
            json.dump(docs, open(path, "w"))
            json.dump(queries(), open(path + ".queries", "w"))
            subprocess.run([args.torch_python, "-c", ST_SCRIPT, args.hf, str(args.threads), str(args.batch), path],
                           check=True, env=env, stderr=subprocess.DEVNULL)
            st = json.load(open(path + ".out"))
        st["texts_per_s"] = len(docs) / st["wall_s"]
        st["tokens_per_s"] = st["tokens"] / st["wall_s"]
        res["st"] = st
        print(f"  {'sentence-transformers':22} {st['texts_per_s']:7.2f} texts/s  {st['tokens_per_s']:8.1f} tokens/s"
              f"  ({st['tokens']} tokens, {st['wall_s']:.1f} s)  one query p50 {st['query_p50_ms']:.1f} ms")

    g, l = res["galley"], res["llama"]
    cos = [cosine(a, b) for a, b in zip(g["vectors"], l["vectors"])]
    print("\n| engine | weights | texts/s | tokens/s | ratio | one query p50 (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    print(f"| galley serve | GGUF | {g['texts_per_s']:.2f} | {g['tokens_per_s']:.1f} | **{g['texts_per_s'] / l['texts_per_s']:.2f}x** | {g['query_p50_ms']:.1f} |")
    print(f"| llama-server | GGUF | {l['texts_per_s']:.2f} | {l['tokens_per_s']:.1f} | 1 | {l['query_p50_ms']:.1f} |")
    if "st" in res:
        f, s = res["galley_f32"], res["st"]
        diff = max(abs(x - y) for a, b in zip(f["vectors"], s["vectors"]) for x, y in zip(a, b))
        print(f"| galley serve | f32 | {f['texts_per_s']:.2f} | {f['tokens_per_s']:.1f} | **{f['texts_per_s'] / s['texts_per_s']:.2f}x** | {f['query_p50_ms']:.1f} |")
        print(f"| sentence-transformers | f32 | {s['texts_per_s']:.2f} | {s['tokens_per_s']:.1f} | 1 | {s['query_p50_ms']:.1f} |")
        print(f"\ngalley (f32) vs sentence-transformers: largest difference {diff:.2e}")
    print(f"galley vs llama.cpp (GGUF): cosine min {min(cos):.5f}, mean {statistics.mean(cos):.5f}")
    if args.json:
        for r in res.values():
            r.pop("vectors", None)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()

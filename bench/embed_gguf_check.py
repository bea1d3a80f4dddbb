"""Does llama.cpp read galley's embedding GGUFs as sentence-transformers computes them?

For each tiny sentence-transformers folder of `host/model/tests/fixtures/embed` that a GGUF
can carry (Qwen3-Embedding's recipe as `qwen3` with `pooling_type` last and `add_eos_token`;
EmbeddingGemma's as llama.cpp's `gemma-embedding`: attention both ways, mean pooling, the two
dense layers as `dense_2` / `dense_3`), `galley export` writes an f32 GGUF; llama.cpp's
`llama-server --embeddings` serves it with the pooling the file names, and its vectors for the
fixture's texts are compared with the ones sentence-transformers computed (`expected.json`),
and with `galley embed`'s from the same file.

Usage: python bench/embed_gguf_check.py GALLEY_BIN LLAMA_SERVER   (scripts/embed-check.sh)
Standard library only.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

from loopback import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "host/model/tests/fixtures/embed")


def post(url, body):
    req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def llama_vectors(server, gguf, texts):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "--embeddings",
                             "-c", "1024", "-b", "512", "-ub", "512", "-t", "2", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):
            if proc.poll() is not None:
                sys.exit(f"llama-server exited:\n{proc.stderr.read()[-3000:]}")
            try:
                r = post(url, {"input": texts, "encoding_format": "float"})
                return [d["embedding"] for d in sorted(r["data"], key=lambda d: d["index"])]
            except Exception:
                time.sleep(0.5)
        sys.exit("llama-server did not answer")
    finally:
        proc.terminate()
        proc.wait()


def largest(a, b):
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def main():
    galley, server = sys.argv[1], sys.argv[2]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["qwen3-last", "gemma3-bidirectional"]:
            folder = os.path.join(FIX, name)
            want = json.load(open(os.path.join(folder, "expected.json")))
            gguf = os.path.join(tmp, name + ".gguf")
            subprocess.run([galley, "export", folder, "-o", gguf, "--outtype", "f32"], check=True,
                           stdout=subprocess.DEVNULL)
            got = llama_vectors(server, gguf, want["texts"])
            lines = "\n".join(json.dumps(t) for t in want["texts"])
            out = subprocess.run([galley, "embed", "-m", gguf, "-i", "/dev/stdin"], input=lines, text=True,
                                 check=True, capture_output=True).stdout
            ours = [json.loads(l)["embedding"] for l in out.splitlines()]
            d_llama, d_galley = largest(got, want["plain"]), largest(ours, want["plain"])
            worst = max(worst, d_llama, d_galley)
            print(f"{name}: llama.cpp on galley's GGUF vs sentence-transformers {d_llama:.2e}; "
                  f"galley on the same GGUF {d_galley:.2e} ({len(want['texts'])} texts, {len(got[0])} values)")
    # llama.cpp runs f16 attention products and its own sums: agreement to ~1e-3 is a match;
    # a wrong mask, pooling or dense layer moves vectors by 1e-1.
    if worst > 5e-3:
        sys.exit(f"FAILED: largest difference {worst:.2e}")
    print("ok")


if __name__ == "__main__":
    main()

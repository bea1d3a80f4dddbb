"""Constrained decoding: `galley serve` vs llama.cpp's `llama-server` on the same GGUF, one
client, decoding tokens/s with no constraint, in JSON mode (`response_format: json_object`)
and with a JSON schema (`json_schema`, the strict schema the openai client writes for a
pydantic model; llama.cpp turns it into a grammar). Each answer is streamed; its decode rate
is (tokens - 1) / (last chunk - first chunk), so the prompt's prefill is left out. Prints each
run, the median per mode and the ratios: constrained / plain within each server, and galley /
llama.cpp per mode.

Usage: python bench/structured_bench.py GALLEY_BIN GGUF LLAMA_SERVER [--runs N] [--threads T]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "country", "population_millions", "capital", "color", "nickname", "landmarks"],
    "$defs": {"Color": {"enum": ["red", "green", "blue"], "title": "Color", "type": "string"}},
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "population_millions": {"type": "number"},
        "capital": {"type": "boolean"},
        "color": {"$ref": "#/$defs/Color"},
        "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "landmarks": {"type": "array", "items": {"type": "string"}},
    },
}
PROMPT = ("Describe Paris as a JSON object with its name, country, population in millions, whether "
          "it is a capital, a color, a nickname and two landmarks.")
MODES = {
    "plain": None,
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA, "strict": True}},
}


def wait(url, proc, what):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not start")


def run(url, model, fmt, seed):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 256,
            "temperature": 0.8, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    if fmt:
        body["response_format"] = fmt
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    first = last = None
    chunks, text, usage, finish = 0, "", None, None
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices", []):
                finish = ch.get("finish_reason") or finish
                piece = (ch.get("delta") or {}).get("content") or ""
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
                    text += piece
    n = usage["completion_tokens"] if usage else chunks
    if fmt and finish == "stop":
        json.loads(text)  # a constrained answer that ended must be one JSON document
    rate = (n - 1) / (last - first) if last and last > first else float("nan")
    return n, rate, finish


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("galley")
    ap.add_argument("gguf")
    ap.add_argument("llama_server")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, CANDLE_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    servers = [
        ("galley", [args.galley, "serve", "-m", args.gguf, "--name", "m", "--port", "8397",
                    "--prompt-cache-mib", "0"], "http://127.0.0.1:8397"),
        ("llama.cpp", [args.llama_server, "-m", args.gguf, "--port", "8398", "-t", str(args.threads),
                       "-np", "1", "--no-cache-prompt", "-c", "2048", "--no-webui"], "http://127.0.0.1:8398"),
    ]
    med = {}
    for name, cmd, url in servers:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            wait(url, proc, name)
            run(url, "m", None, 0)  # warm-up
            for mode, fmt in MODES.items():
                rates = []
                for i in range(args.runs):
                    n, rate, finish = run(url, "m", fmt, i + 1)
                    rates.append(rate)
                    print(f"{name:9} {mode:11} run {i + 1}: {n:3} tokens ({finish}), {rate:6.1f} tok/s decode")
                med[(name, mode)] = statistics.median(rates)
        finally:
            proc.terminate()
            proc.wait()
    print()
    for name in ("galley", "llama.cpp"):
        p = med[(name, "plain")]
        print(f"{name:9} median decode tok/s: plain {p:.1f}, json_object {med[(name, 'json_object')]:.1f} "
              f"({med[(name, 'json_object')] / p:.2f}x), json_schema {med[(name, 'json_schema')]:.1f} "
              f"({med[(name, 'json_schema')] / p:.2f}x)")
    for mode in MODES:
        print(f"galley / llama.cpp, {mode}: {med[('galley', mode)] / med[('llama.cpp', mode)]:.2f}x")


if __name__ == "__main__":
    main()

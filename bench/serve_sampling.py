"""What a sampling setting costs through `galley serve`: one client, six chat requests of up to
128 tokens each with fixed seeds, once with `min_p: 0.05` (the server's default `top_k` is 0,
as vLLM's), once with nothing cut; prints tokens/s of each and their ratio. The seeds make both
runs of a setting produce the same tokens on any build whose draws are unchanged.

    galley serve -m .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 18431 &
    python3 bench/serve_sampling.py http://127.0.0.1:18431 SmolLM2-135M-Instruct.Q4_1
"""

import json
import sys
import time
import urllib.request

url, model = sys.argv[1], sys.argv[2]


def run(extra):
    tokens, t0 = 0, time.perf_counter()
    for i in range(6):
        body = dict(
            model=model,
            messages=[{"role": "user", "content": "Write a long story about lighthouse keeper number %d." % i}],
            max_tokens=128,
            temperature=0.8,
            seed=i,
            **extra,
        )
        req = urllib.request.Request(
            url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        tokens += json.load(urllib.request.urlopen(req))["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - t0


run({})  # warm, unmeasured
rates = {}
for name, extra in [("min_p 0.05, no top_k", {"min_p": 0.05}), ("nothing cut", {})]:
    t, s = run(extra)
    rates[name] = t / s
    print(f"{name}: {t} tokens in {s:.2f} s = {t / s:.1f} tok/s")
print(f"min-p / nothing cut: {rates['min_p 0.05, no top_k'] / rates['nothing cut']:.2f}x")

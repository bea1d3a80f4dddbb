"""llama.cpp reads what `galley export` writes: each exported GGUF is loaded by llama.cpp
(llama-cpp-python, built from source by scripts/llama-venv.sh) and scores texts token by
token (`echo` + `logprobs`, as lm-evaluation-harness scores through a completions API); the
same texts are scored by `galley serve` on the source checkpoint. Prints, per GGUF, the
largest difference of a token's log-probability, the mean, and whether greedy continuations
agree. Usage: gguf_check.py GALLEY_URL FILE.gguf [FILE.gguf ...]"""
import json, sys, urllib.request
from llama_cpp import Llama

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "12 + 7 = 19. 19 * 2 = 38. The answer is 38.",
]
PROMPTS = ["The three primary colors are", "To make a cup of tea, first", "Water boils at"]


def galley(url, body):
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def main():
    url, files = sys.argv[1], sys.argv[2:]
    ref = [galley(url, {"model": "m", "prompt": t, "max_tokens": 0, "echo": True, "logprobs": 1,
                        "temperature": 0})["choices"][0]["logprobs"] for t in TEXTS]
    ref_gen = [galley(url, {"model": "m", "prompt": p, "max_tokens": 24, "temperature": 0})
               ["choices"][0]["text"] for p in PROMPTS]
    for f in files:
        llm = Llama(model_path=f, n_ctx=512, logits_all=True, n_threads=2, verbose=False)
        diffs, tokens_differ = [], 0
        for t, r in zip(TEXTS, ref):
            out = llm.create_completion(t, max_tokens=1, echo=True, logprobs=1, temperature=0)
            lp = out["choices"][0]["logprobs"]
            # The echo's tokens: llama.cpp's tokenizer on galley's exported vocabulary.
            n = len(r["token_logprobs"])
            if lp["tokens"][:n] != r["tokens"]:
                tokens_differ += 1
                continue
            for a, b in zip(lp["token_logprobs"][1:n], r["token_logprobs"][1:]):
                diffs.append(abs(a - b))
        gen = [llm.create_completion(p, max_tokens=24, temperature=0)["choices"][0]["text"]
               for p in PROMPTS]
        print(json.dumps({
            "file": f,
            "scored_tokens": len(diffs),
            "texts_tokenized_differently": tokens_differ,
            "max_abs_logprob_diff": max(diffs) if diffs else None,
            "mean_abs_logprob_diff": sum(diffs) / len(diffs) if diffs else None,
            "greedy_same": sum(a == b for a, b in zip(gen, ref_gen)),
            "greedy_of": len(PROMPTS),
            "llama_cpp_greedy": gen[0],
            "galley_greedy": ref_gen[0],
        }), flush=True)


main()

"""llama.cpp reads what `galley export` writes: each exported GGUF is loaded by llama.cpp
(llama-cpp-python, built from source by scripts/llama-venv.sh) and scores texts token by
token (the log-softmax of its logits); the same texts are scored by `galley serve` on the
source checkpoint (`echo` + `logprobs`, as lm-evaluation-harness scores through a completions
API). Prints, per GGUF, the
largest difference of a token's log-probability, the mean, and whether greedy continuations
agree. Usage: gguf_check.py GALLEY_URL FILE.gguf [FILE.gguf ...]; an entry BASE.gguf+LORA.gguf
loads a llama.cpp LoRA adapter over the base and is compared with galley's model `tuned` (the
adapter's PEFT folder served over the same source); BASE.gguf+none compares the base alone
with `tuned`, to show how far the adapter moves the scores."""
import json, sys, urllib.request
import numpy as np
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
    refs = {}

    def reference(model):
        if model not in refs:
            scored = [galley(url, {"model": model, "prompt": t, "max_tokens": 0, "echo": True,
                                   "logprobs": 1, "temperature": 0})["choices"][0]["logprobs"]
                      for t in TEXTS]
            gen = [galley(url, {"model": model, "prompt": p, "max_tokens": 24, "temperature": 0})
                   ["choices"][0]["text"] for p in PROMPTS]
            refs[model] = (scored, gen)
        return refs[model]

    for f in files:
        base, _, lora = f.partition("+")
        ref, ref_gen = reference("tuned" if "+" in f else "m")
        # BASE.gguf+none: the base alone against the adapted model, the adapter's own effect.
        lora = None if lora in ("", "none") else lora
        llm = Llama(model_path=base, lora_path=lora, n_ctx=512, logits_all=True,
                    n_threads=2, verbose=False)
        diffs, tokens_differ = [], 0
        for t, r in zip(TEXTS, ref):
            # From llama.cpp's logits: llama-cpp-python 0.3.x's `echo` + `logprobs` returns
            # numbers ~10 nats off the log-softmax of those same logits.
            ids = llm.tokenize(t.encode(), add_bos=False, special=False)
            pieces = [llm.detokenize([i]).decode("utf-8", "replace") for i in ids]
            if pieces != r["tokens"]:
                tokens_differ += 1
                continue
            llm.reset()
            llm.eval(ids)
            sc = np.array(llm.scores[: len(ids)], dtype=np.float64)
            m = sc.max(1, keepdims=True)
            ls = sc - m - np.log(np.exp(sc - m).sum(1, keepdims=True))
            for i in range(1, len(ids)):
                diffs.append(abs(float(ls[i - 1, ids[i]]) - r["token_logprobs"][i]))
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

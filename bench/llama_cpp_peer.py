"""The peer of model-bench: llama.cpp (through llama-cpp-python, built from source) on the same
GGUF with the same thread count, measured the way llama-bench measures: pp = one forward pass
over N prompt tokens, tg = N single-token forward passes (no sampling), best of `reps` runs.
Prints one JSON line."""
import json, sys, time
from llama_cpp import Llama

path, threads, pp, tg, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=pp + tg + 8, n_batch=pp, n_ubatch=pp, n_threads=threads, n_threads_batch=threads, verbose=False)
vocab = llm.n_vocab()
prompt = [(i * 7919 + 13) % vocab for i in range(pp)]


def timed(f):
    best = float("inf")
    for _ in range(reps + 1):  # the first run warms up
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


pp_s = timed(lambda: llm.eval(prompt))


def gen():
    for i in range(tg):
        llm.eval([prompt[i % pp]])


tg_s = timed(gen)
print(json.dumps({"pp_tok_s": pp / pp_s, "tg_tok_s": tg / tg_s, "threads": threads}))

"""The memory peer of `model-bench --depth`: the bytes llama.cpp's KV cache takes for a context
of N positions on the same GGUF, as llama.cpp itself reports them when it makes the context
(llama-cpp-python built from source by scripts/llama-venv.sh, the same ggml as llama-bench),
with its sliding-window cache (swa_full off: llama-server's and llama-cli's default, window
plus one batch of cells for the sliding layers) and without it (swa_full on: every layer holds
every cell). f16 keys and values, batch and micro-batch 512 as model-bench prefills.

Usage: bench/.venv-llama/bin/python bench/llama_kv_peer.py GGUF N [N ...]
Prints one JSON line per N: {"n_ctx": N, "swa_mib": ..., "full_mib": ...}."""
import json
import os
import re
import sys
import tempfile

from llama_cpp import Llama


def kv_mib(path, n_ctx, swa_full):
    """The sum of the `llama_kv_cache: size = X MiB` lines llama.cpp logs to stderr."""
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                        swa_full=swa_full, verbose=True)
            del llm
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        sizes = re.findall(r"llama_kv_cache: size =\s*([0-9.]+) MiB", log.read())
    if not sizes:
        sys.exit("llama.cpp logged no KV cache size")
    return sum(float(s) for s in sizes)


path = sys.argv[1]
for n in map(int, sys.argv[2:]):
    print(json.dumps({"n_ctx": n, "swa_mib": kv_mib(path, n, False), "full_mib": kv_mib(path, n, True)}))

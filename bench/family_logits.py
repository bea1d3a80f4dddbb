"""One model's logits for a fixed sequence of ids, by transformers (an HF folder) or by llama.cpp
(a GGUF, through llama-cpp-python), as JSON: what scripts/families-check.sh compares to show
that llama.cpp computes from galley's GGUF exports what transformers computes from the source. `compare` prints the largest difference relative to the reference's largest logit.

Usage: family_logits.py transformers HF_DIR OUT.json   (bench/.venv-train)
       family_logits.py llama FILE.gguf OUT.json       (bench/.venv-llama)
       family_logits.py compare REFERENCE.json OTHER.json
"""

import json
import sys

IDS = [1, 17, 42, 5, 99, 63, 2, 120, 7, 7, 31]


def transformers_logits(path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].tolist()


def llama_logits(path):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(IDS)
    return np.array(llm.scores[: len(IDS)]).tolist()


def main():
    mode = sys.argv[1]
    if mode == "compare":
        a, b = (json.load(open(p)) for p in sys.argv[2:4])
        worst = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        scale = max(abs(x) for r in a for x in r)
        print(f"largest difference {worst:.3g}, relative to the largest logit {worst / scale:.3g}")
        sys.exit(0 if worst / scale < 1e-3 else 1)
    logits = transformers_logits(sys.argv[2]) if mode == "transformers" else llama_logits(sys.argv[2])
    json.dump(logits, open(sys.argv[3], "w"))


if __name__ == "__main__":
    main()

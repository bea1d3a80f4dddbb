"""lm-evaluation-harness's `local-completions` model scoring arc_easy through `galley serve`,
against `galley eval` on the same items and the same GGUF, in one run.

The harness tokenizes with SmolLM2's HF tokenizer (written by bench/eval_parity.py into
bench/out/eval/smollm2-f32, or any folder given), sends context + continuation token ids to
`/v1/completions` with `echo` and `logprobs`, and reads the continuation's log-probabilities
back; the task is galley's built-in arc_easy file with its data pointed at the local JSONL
(scripts/fetch-eval-data.sh).

Usage: bench/.venv-eval/bin/python bench/serve_lmeval.py GALLEY_BIN GGUF TOKENIZER_DIR [--limit 100]
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("galley")
ap.add_argument("gguf")
ap.add_argument("tokenizer")
ap.add_argument("--limit", type=int, default=100)
ap.add_argument("--data", default=os.environ.get("GALLEY_EVAL_DATA", ".cache/eval-data"))
# f32 weights on both sides, as the evaluation parity bench runs: on the GGUF's quantized
# weights a short prompt scored alone runs the 8-bit-activation kernels while `galley eval`'s
# large batches run dense products, and near ties can flip (one item of 100 did).
ap.add_argument("--quantized", action="store_true", help="keep the GGUF's quantized weights")
args = ap.parse_args()

work = tempfile.mkdtemp(prefix="serve-lmeval-")
src = open(os.path.join(os.path.dirname(__file__), "..", "host", "eval", "tasks", "arc_easy.yaml")).read()
src = re.sub(r"^dataset_path:.*$", "dataset_path: json", src, flags=re.M)
src = re.sub(r"^dataset_name:.*$", "", src, flags=re.M)
for key in ["training_split", "validation_split"]:
    src = re.sub(rf"^{key}:.*$", "", src, flags=re.M)
test = os.path.abspath(os.path.join(args.data, "allenai/ai2_arc/ARC-Easy/test.jsonl"))
src += f"dataset_kwargs:\n  data_files:\n    test: {test}\n"
open(os.path.join(work, "arc_easy.yaml"), "w").write(src)

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
deq = [] if args.quantized else ["--dequantize"]
server = subprocess.Popen([args.galley, "serve", "-m", args.gguf, "--name", "smol", "--port", str(port), *deq],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            break
        except Exception:
            time.sleep(0.5)
    from lm_eval import simple_evaluate  # noqa: E402
    from lm_eval.tasks import TaskManager  # noqa: E402

    t0 = time.time()
    res = simple_evaluate(
        model="local-completions",
        model_args=(f"model=smol,base_url=http://127.0.0.1:{port}/v1/completions,"
                    f"tokenizer_backend=huggingface,tokenizer={os.path.abspath(args.tokenizer)},"
                    "tokenized_requests=True,num_concurrent=4,max_retries=1"),
        tasks=["arc_easy"],
        limit=args.limit,
        task_manager=TaskManager(include_path=work),
        log_samples=False,
    )
    harness_s = time.time() - t0
    h = res["results"]["arc_easy"]
finally:
    server.terminate()
    server.wait()

t0 = time.time()
out = subprocess.run([args.galley, "eval", "-m", args.gguf, "--tasks", "arc_easy", "--limit", str(args.limit),
                      "--data-dir", args.data, "--json", *([] if args.quantized else ["-s", "dequantize=true"])],
                     capture_output=True, text=True, check=True)
galley_s = time.time() - t0
g = json.loads(out.stdout)["results"]["arc_easy"]
print(f"arc_easy, {args.limit} items, 0-shot, SmolLM2-135M-Instruct ({'Q4_1' if args.quantized else 'f32 from the Q4_1 GGUF'}):")
print(f"  lm-eval local-completions -> galley serve: acc {h['acc,none']:.4f}  acc_norm {h['acc_norm,none']:.4f}  ({harness_s:.1f} s)")
print(f"  galley eval (native engine):              acc {g['acc,none']:.4f}  acc_norm {g['acc_norm,none']:.4f}  ({galley_s:.1f} s)")
same = abs(h["acc,none"] - g["acc,none"]) < 1e-9 and abs(h["acc_norm,none"] - g["acc_norm,none"]) < 1e-9
print("  identical" if same else "  DIFFERENT")
sys.exit(0 if same else 1)

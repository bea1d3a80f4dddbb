"""Parity of `galley eval`'s `loglikelihood_rolling` (perplexity tasks) with
lm-evaluation-harness's HF backend, f32, on documents longer than the model is given: both
run with `max_length` set (the harness's model argument; galley's `max_length` setting), so
each document is scored in the harness's rolling windows. Same model (SmolLM2-135M-Instruct's
GGUF, dequantized: the HF folder eval_parity.py writes), same task YAML, same documents
(passages of the public-domain Shakespeare texts scripts/fetch-data.sh fetches), same run.

Prints per-document log-likelihood differences, both sides' word_perplexity, byte_perplexity
and bits_per_byte, and both runs' documents/s.

python bench/rolling_parity.py GALLEY_BIN MODEL.gguf OUT [--max-length=128] [--docs=24]
"""

import json
import os
import subprocess
import sys
import time

galley, gguf, out = sys.argv[1:4]
opt = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in sys.argv[4:] if a.startswith("--") and "=" in a}
max_length = int(opt.get("--max-length", "128"))
docs = int(opt.get("--docs", "24"))
threads = int(os.environ.get("GALLEY_BENCH_THREADS", "2"))
os.makedirs(out, exist_ok=True)

import torch  # noqa: E402

torch.set_num_threads(threads)
sys.path.insert(0, os.path.dirname(__file__))
from hf_f32 import hf_folder  # noqa: E402

hf_dir = hf_folder(gguf, os.path.join(os.path.dirname(out.rstrip("/")) or ".", "eval", "smollm2-f32"))

# Documents: passages of ~1,500 characters (several hundred tokens: 3-5 windows of 128).
root = os.path.join(os.path.dirname(__file__), "..", ".cache", "data", "shakespeare")
passages = []
for name in sorted(os.listdir(root)):
    text = open(os.path.join(root, name), encoding="utf-8", errors="replace").read()
    paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 200]
    buf = ""
    for p in paras[20:]:  # past the title pages
        buf = (buf + "\n\n" + p) if buf else p
        if len(buf) > 1500:
            passages.append(buf)
            buf = ""
            break
    if len(passages) >= docs:
        break
data = os.path.abspath(os.path.join(out, "docs.jsonl"))
with open(data, "w") as f:
    for p in passages:
        f.write(json.dumps({"text": p}) + "\n")
tasks = os.path.join(out, "tasks")
os.makedirs(tasks, exist_ok=True)
task_file = os.path.join(tasks, "shakespeare_rolling.yaml")
open(task_file, "w").write(f"""task: shakespeare_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

t0 = time.time()
res = simple_evaluate(
    model="hf",
    model_args=f"pretrained={hf_dir},dtype=float32,max_length={max_length}",
    tasks=["shakespeare_rolling"],
    batch_size=8,
    device="cpu",
    log_samples=True,
    task_manager=TaskManager(include_path=tasks),
)
peer_s = time.time() - t0
peer = {s["doc_id"]: float(s["resps"][0][0]) for s in res["samples"]["shakespeare_rolling"]}

gout = os.path.join(out, "galley")
t0 = time.time()
cmd = [galley, "eval", "-m", gguf, "--tasks", task_file, "-o", gout, "--json",
       "-s", f"max_length={max_length}", "-s", "dequantize=true"]
p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": str(threads)})
galley_s = time.time() - t0
if p.returncode != 0:
    sys.exit(f"galley failed: {p.stderr}")
gres = json.loads(p.stdout)
ours = {}
for line in open(os.path.join(gout, "samples.jsonl")):
    s = json.loads(line)
    ours[s["doc_id"]] = s["loglikelihoods"][0][0]
assert set(ours) == set(peer), f"different documents: {sorted(ours)} vs {sorted(peer)}"
rel = {d: abs(ours[d] - peer[d]) / max(abs(peer[d]), 1e-9) for d in ours}
worst = max(rel, key=rel.get)
metrics = lambda r: {k: v for k, v in r.items() if "," in k and "stderr" not in k}  # noqa: E731
line = {
    "documents": len(ours), "max_length": max_length,
    "max_rel_ll_diff": rel[worst], "worst_doc": {"doc": worst, "galley": ours[worst], "harness": peer[worst]},
    "galley": metrics(gres["results"]["shakespeare_rolling"]),
    "harness": metrics(res["results"]["shakespeare_rolling"]),
    "galley_s": galley_s, "harness_s": peer_s, "speedup": peer_s / galley_s,
    "galley_peak_mib": gres.get("peak_memory_mib"),
}
print(json.dumps(line, indent=1))
json.dump(line, open(os.path.join(out, "rolling.json"), "w"), indent=1)

"""Parity and speed of `galley eval` against lm-evaluation-harness (its HF backend, f32) on the
same model and the same data files, in one run.

The model is SmolLM2-135M-Instruct's GGUF: the harness reads it dequantized to f32 through
transformers (saved once as an HF folder), galley reads the same GGUF with `dequantize` on.
The harness's tasks are galley's built-in task files (the harness's own YAML) with the data
pointed at the same local JSONL files (`dataset_path: json`, `data_files`), so both build
their prompts from identical documents.

Checks: per-request log-likelihoods (relative difference), and per-document acc / acc_norm /
exact_match; prints documents/s for both, their ratio, and peak memory.

python bench/eval_parity.py GALLEY_BIN MODEL.gguf EVAL_DATA OUT [--quick] [--only=arc_easy,hellaswag,mmlu,gsm8k]
"""

import json
import os
import re
import resource
import subprocess
import sys
import time

galley, gguf, data, out = sys.argv[1:5]
quick = "--quick" in sys.argv
only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), None)
threads = int(os.environ.get("GALLEY_BENCH_THREADS", "2"))
os.makedirs(out, exist_ok=True)

import torch  # noqa: E402

torch.set_num_threads(threads)
sys.path.insert(0, os.path.dirname(__file__))
from hf_f32 import hf_folder  # noqa: E402

hf_dir = hf_folder(gguf, os.path.join(out, "smollm2-f32"))

# The harness's tasks: galley's built-in files with local data.
tasks_src = os.path.join(os.path.dirname(__file__), "..", "host", "eval", "tasks")
peer_dir = os.path.join(out, "peer-tasks")
os.makedirs(peer_dir, exist_ok=True)


def local(text, path, splits):
    text = re.sub(r"^dataset_path:.*$", "dataset_path: json", text, flags=re.M)
    text = re.sub(r"^dataset_name:.*$", "", text, flags=re.M)
    # The harness reads every split a task names at load: keep only those with data here.
    for key in ["training_split", "validation_split", "test_split", "fewshot_split"]:
        m = re.search(rf"^{key}:\s*(\S+)\s*$", text, flags=re.M)
        if m and m.group(1) not in splits and m.group(1) != "null":
            text = text.replace(m.group(0), "")
    files = "".join(f"    {s}: {os.path.abspath(os.path.join(data, path, s + '.jsonl'))}\n" for s in splits)
    return text + "dataset_kwargs:\n  data_files:\n" + files


for name, path, splits in [
    ("arc_easy", "allenai/ai2_arc/ARC-Easy", ["test"]),
    ("hellaswag", "Rowan/hellaswag", ["validation"]),
    ("gsm8k", "openai/gsm8k/main", ["test"]),
]:
    src = open(os.path.join(tasks_src, name + ".yaml")).read()
    open(os.path.join(peer_dir, name + ".yaml"), "w").write(local(src, path, splits))
# Where galley's file stands in for Python the harness runs (winogrande's functions,
# hellaswag's process_docs), the harness runs its own file and functions: the comparison
# then also checks galley's Jinja equivalents and the fetch-time preprocessing.
import lm_eval.tasks as _lt  # noqa: E402
import shutil  # noqa: E402

harness_tasks = os.path.dirname(_lt.__file__)
for name, sub, rel, path, splits in [
    ("winogrande", "winogrande", "default.yaml", "allenai/winogrande/winogrande_xl", ["validation"]),
    ("hellaswag_harness", "hellaswag", "hellaswag.yaml", "Rowan/hellaswag", ["validation"]),
    ("piqa", "piqa", "piqa.yaml", "baber/piqa", ["validation"]),
    ("boolq", "super_glue/boolq", "default.yaml", "aps/super_glue/boolq", ["validation"]),
]:
    src_dir = os.path.join(harness_tasks, sub)
    for f in os.listdir(src_dir):
        if f.endswith(".py"):
            shutil.copy(os.path.join(src_dir, f), peer_dir)
    text = open(os.path.join(src_dir, rel)).read()
    if name == "hellaswag_harness":
        continue  # galley's hellaswag file is used for both (above); kept for reference
    open(os.path.join(peer_dir, name + ".yaml"), "w").write(local(text, path, splits))
template = open(os.path.join(tasks_src, "mmlu_template.yaml")).read()
subjects = [line.split() for line in open(os.path.join(tasks_src, "mmlu_subjects.txt")) if line.strip()]
for subject, _ in subjects:
    body = local(template, f"cais/mmlu/{subject}", ["test", "dev"])
    desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    body = f"task: mmlu_{subject}\ntask_alias: {subject}\ndescription: {json.dumps(desc)}\n" + body
    open(os.path.join(peer_dir, f"mmlu_{subject}.yaml"), "w").write(body)

limit_mc = 20 if quick else 200
runs = [
    ("arc_easy", ["arc_easy"], 0, limit_mc),
    ("hellaswag", ["hellaswag"], 0, limit_mc),
    # 4 per subject: 228 documents across all 57.
    ("mmlu", [f"mmlu_{s}" for s, _ in subjects], 0, 1 if quick else 4),
    # 5-shot: every question of a subject repeats the same five dev examples (first_n).
    ("mmlu_5shot", [f"mmlu_{s}" for s, _ in subjects], 5, 1 if quick else 4),
    ("gsm8k", ["gsm8k"], 5, 10 if quick else 100),
    # The harness's own winogrande (Python functions) against galley's Jinja; piqa, boolq.
    ("winogrande", ["winogrande"], 0, limit_mc),
    ("piqa", ["piqa"], 0, limit_mc),
    ("boolq", ["boolq"], 0, limit_mc),
]

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

tm = TaskManager(include_path=peer_dir)
report = []
for label, tasks, shots, limit in runs:
    if only and label not in only:
        continue
    # --- the harness
    t0 = time.time()
    res = simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=tasks,
        num_fewshot=shots,
        limit=limit,
        batch_size=int(os.environ.get("GALLEY_BENCH_PEER_BATCH", "8")),
        device="cpu",
        log_samples=True,
        task_manager=tm,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    peer_s = time.time() - t0
    peer = {}
    for t, samples in res["samples"].items():
        for s in samples:
            peer[(t, s["doc_id"])] = s
    # --- galley
    gout = os.path.join(out, "galley-" + label)
    t0 = time.time()
    cmd = [galley, "eval", "-m", gguf, "--tasks", ",".join(tasks), "--num-fewshot", str(shots),
           "--limit", str(limit), "-o", gout, "--data-dir", data, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": str(threads)})
    galley_s = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"galley failed: {p.stderr}")
    gres = json.loads(p.stdout)
    ours = {}
    for line in open(os.path.join(gout, "samples.jsonl")):
        s = json.loads(line)
        ours[(s["task"], s["doc_id"])] = s
    assert set(ours) == set(peer), f"{label}: different documents: {len(ours)} vs {len(peer)}"
    worst = 0.0
    worst_at = None
    n_req = 0
    disagree = {}
    gen_diff = 0
    for key, s in ours.items():
        q = peer[key]
        if s.get("loglikelihoods"):
            theirs = [r[0] for r in q["resps"]]
            for (ll, _), r, arg in zip(s["loglikelihoods"], theirs, q["arguments"]):
                a, b = ll, float(r[0])
                rel = abs(a - b) / max(abs(b), 1e-9)
                if rel > worst:
                    worst, worst_at = rel, {"doc": key[1], "galley": a, "harness": b,
                                            "continuation": list(arg.values())[1] if isinstance(arg, dict) else arg[1]}
                n_req += 1
        else:
            if s["prediction"] != q["resps"][0][0].split("Question:")[0] and s["prediction"] not in q["resps"][0][0]:
                gen_diff += 1
        for k, v in s["grades"].items():
            metric, filt = k.split(",")
            theirs_v = q.get(metric)
            if q.get("filter") and q["filter"] != filt:
                continue
            if theirs_v is not None and float(theirs_v) != float(v):
                disagree[k] = disagree.get(k, 0) + 1
    n = len(ours)
    line = {
        "task": label, "documents": n, "requests": n_req, "max_rel_ll_diff": worst, "worst_request": worst_at,
        "per_doc_metric_disagreements": disagree, "generations_differing": gen_diff,
        "galley_s": galley_s, "harness_s": peer_s,
        "galley_docs_per_s": n / galley_s, "harness_docs_per_s": n / peer_s,
        "speedup": peer_s / galley_s,
        "galley_peak_mib": gres.get("peak_memory_mib"),
        "galley": {t: {k: v for k, v in r.items() if "," in k} for t, r in (gres["groups"] or gres["results"]).items()} if not label.startswith("mmlu") else None,
        "harness": {t: {k: v for k, v in r.items() if "," in k} for t, r in res["results"].items()} if not label.startswith("mmlu") else None,
    }
    report.append(line)
    print(json.dumps(line), flush=True)

peer_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"harness_process_peak_mib": peer_peak, "threads": threads}))
json.dump(report, open(os.path.join(out, "parity.json"), "w"), indent=1)

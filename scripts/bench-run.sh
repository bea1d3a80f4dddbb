#!/usr/bin/env bash
# Orchestration overhead of `galley run` (goal: under 1% of the run): planning (recipes'
# `plan`, plugin resolution and verification, the model's digest), each stage's plugin
# opening, recipe `on-metrics` calls, data digests and the merged-model exports that exist only
# to hand a model to the next stage, and the bookkeeping between stages — as a share of the
# quickstart run's wall time. The peer, measured in the same invocation: the same stages as
# standalone `galley train` / `galley eval` commands on the run's own resolved configs, whose
# summed wall time the run's is compared with. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/fetch-data.sh
export GALLEY_EVAL_DATA=${GALLEY_EVAL_DATA:-$PWD/.cache/eval-data}
scripts/fetch-eval-data.sh
cargo build --release -p galley
g=$PWD/target/release/galley
cd examples/run
$g plugin install galley/curriculum galley/preference galley/arith galley/math-answer galley/format >/dev/null
out=${BENCH_RUN_DIR:-$PWD/../../bench/out/run}
rm -rf "$out" && mkdir -p "$out"
start=$(date +%s.%N)
# What a user sees (stage lines on stderr, the summary on stdout) is kept in run.log.
$g run quickstart.yaml --output "$out/run" > "$out/run.log" 2> "$out/stderr.log"
run_s=$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$start")
cp "$out/run/run.json" "$out/manifest.json"
grep -v " WARN " "$out/stderr.log" || true; cat "$out/run.log"
# The peer: every stage again as its own command, from the configs the run resolved.
peer_s=0
for stage in $(python3 -c "import json,sys; [print(s['name'] + ':' + s['kind'] + ':' + str(s['steps'] or 0)) for s in json.load(open(sys.argv[1]))['stages']]" "$out/manifest.json"); do
    name=${stage%%:*}; rest=${stage#*:}; kind=${rest%%:*}; steps=${rest##*:}
    t=$(date +%s.%N)
    if [ "$kind" = evaluate ]; then
        python3 - "$out" "$name" > "$out/$name.eval.yaml" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
st = next(s for s in m["stages"] if s["name"] == sys.argv[2])
res = json.load(open(st["outputs"]["results"]))
print(json.dumps({"model": res["model"]["path"], "adapter": res["model"]["adapter"],
                  "tasks": res["settings"]["tasks"], "limit": res["settings"]["limit"],
                  "output": sys.argv[1] + "/peer-" + sys.argv[2]}))
PY
        $g eval "$out/$name.eval.yaml" --json > /dev/null
    else
        # As many steps as the run's stage took (a recipe may have ended it early).
        $g train -c "$out/run/$name/config.yaml" "training.output_dir=$out/peer-$name" \
            "training.max_steps=$steps" --json > /dev/null
    fi
    peer_s=$(python3 -c "import time,sys; print(float(sys.argv[2]) + time.time() - float(sys.argv[1]))" "$t" "$peer_s")
done
python3 - "$out/manifest.json" "$run_s" "$peer_s" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
run_s, peer_s = float(sys.argv[2]), float(sys.argv[3])
stages = sum(s["overhead_seconds"] for s in m["stages"])
over = m["planning_seconds"] + m["bookkeeping_seconds"] + stages
print(f"galley run: {run_s:.1f} s wall, {len(m['stages'])} stages, status {m['status']}")
print(f"  planning {m['planning_seconds']:.3f} s, in-stage orchestration {stages:.3f} s, between stages {m['bookkeeping_seconds']:.3f} s")
for s in m["stages"]:
    print(f"    {s['name']:<10} {s['kind']:<9} {s['seconds']:7.1f} s  orchestration {s['overhead_seconds']:.3f} s")
print(f"  orchestration {over:.3f} s = {100 * over / m['seconds']:.3f}% of the run (goal < 1%)")
print(f"peer: the same stages as standalone commands: {peer_s:.1f} s; galley run / standalone = {run_s / peer_s:.3f}x")
PY

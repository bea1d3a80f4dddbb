#!/usr/bin/env bash
# galley's main job, today: build galley and its first-party plugins, then score a few
# completions with sandboxed reward plugins (math-answer, format, length-penalty), the way
# the GRPO trainer will call them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-plugins.sh
echo
./target/debug/galley score examples/score/score.yaml

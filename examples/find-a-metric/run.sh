#!/usr/bin/env bash
# Find a pruning metric: a short search (the quick space: SmolLM2-135M on a CPU unless --model says otherwise),
# then its equations table. Extra arguments go to `prunerzero search` (e.g. --model Qwen/Qwen2.5-0.5B --space cpu).
#
#   bash examples/find-a-metric/run.sh [OUT] [search options...]
set -euo pipefail
out=${1:-runs/example-find-a-metric}
shift || true
prunerzero search --space quick --out "$out" --quiet "$@"
prunerzero show "$out" --top 5

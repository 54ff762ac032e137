#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default: a short metric search on SmolLM2-135M
# (CPU, offline), printing the best formulas found. Extra arguments go to `prunerzero search`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PRUNERZERO_DATA="${PRUNERZERO_DATA:-$PWD/../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="runs/quick-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/prunerzero search --space search_spaces/quick.yaml --out "$out" "$@"

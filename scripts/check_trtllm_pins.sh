#!/usr/bin/env bash
# The LLM export tests in a venv with the nvidia-modelopt and transformers that TensorRT-LLM 1.2 pins (the pair an
# environment with `pip install 'tensorrt-quantization[tensorrt-llm]'` runs; llm_quant/upstream/trtllm_install.yaml).
# CPU only, TensorRT-LLM itself is not installed (it cannot be here). Usage: scripts/check_trtllm_pins.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/tq-trtllm-pins}
PYTHON=${PYTHON:-python3.11}
read -r MODELOPT TRANSFORMERS < <(.venv/bin/python -c "
from llm_quant.upstream.install import install_table
env = install_table().environment
print(env.nvidia_modelopt, env.transformers)")
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q torch "nvidia-modelopt$MODELOPT" "transformers$TRANSFORMERS" "numpy<2" pydantic pyyaml \
  typer rich tqdm safetensors accelerate numba "datasets>=2.19,<5" "pyarrow>=15,<24" gguf sentencepiece requests packaging \
  "tritonclient[http,grpc]>=2.50" pytest pytest-timeout tokenizers
"$VENV/bin/python" -c "import modelopt, transformers; print('nvidia-modelopt', modelopt.__version__, 'transformers', transformers.__version__)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfs tests/llm_quant/test_build.py tests/llm_quant/test_weight_only.py \
  tests/llm_quant/test_formats.py tests/llm_quant/test_exclusions.py tests/llm_quant/test_sq_per_token.py \
  tests/llm_quant/test_trtllm_conformance.py tests/llm_quant/test_runtime.py tests/llm_quant/test_install.py "${@:2}"

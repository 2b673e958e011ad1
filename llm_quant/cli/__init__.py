"""`llm-quant`: a thin typer layer over the llm_quant and triton_backend library APIs.

Each command group lives in a module of its own with a ``register(app)``; this file only assembles them.
"""

from __future__ import annotations

from llm_quant.cli import build
from quant_common.cli import make_app
from triton_backend import cli as triton_cli

HELP = (
    "Quantize Hugging Face Llama-family checkpoints with nvidia-modelopt, export TensorRT-LLM checkpoints, "
    "package and serve them with Triton.\n\n"
    "Examples:\n\n"
    "  llm-quant build --model llama --qformat int8_sq --out build/llama\n\n"
    "  llm-quant serve build/llama/triton_repo\n\n"
    "  llm-quant generate \"What is INT8 quantization?\" --max-tokens 32 --stream"
)

app = make_app("llm-quant", HELP, "Quantize, package and serve Llama-family LLMs.",
               [build.register, triton_cli.register])


def main() -> None:
    app()


"""`llm-quant`: a thin typer layer over the llm_quant and triton_backend library APIs.

Each command group lives in a module of its own that registers itself on ``app``; this file only assembles them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="llm-quant",
    help=(
        "Quantize Hugging Face Llama-family checkpoints with nvidia-modelopt, export TensorRT-LLM checkpoints, "
        "package and serve them with Triton.\n\n"
        "Examples:\n\n"
        "  llm-quant build --model llama --qformat int8_sq --out build/llama\n\n"
        "  llm-quant serve build/llama/triton_repo\n\n"
        "  llm-quant generate \"What is INT8 quantization?\" --max-tokens 32 --stream"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# An explicit callback keeps typer in multi-command mode: with a lone registered command it would
# otherwise run that command as the whole app, and `vision-quant build X` would break.
@app.callback()
def _group() -> None:
    """Quantize, package and serve Llama-family LLMs."""


def _register_commands() -> None:
    from llm_quant import cli_build
    from triton_backend import cli as triton_cli

    cli_build.register(app)
    triton_cli.register(app)


def main() -> None:
    _register_commands()
    app()


if __name__ == "__main__":
    main()

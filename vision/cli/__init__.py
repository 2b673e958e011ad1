"""`vision-quant`: a thin typer layer over the vision library API.

Each command lives in a module of its own that registers itself on ``app``; this file only assembles them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vision-quant",
    help=(
        "INT8 post-training quantization of YOLOv8 ONNX models with TensorRT's calibration algorithms.\n\n"
        "Examples:\n\n"
        "  vision-quant build yolov8n.onnx --calib-data images/ --out build/\n\n"
        "  vision-quant build yolov8n.onnx --calib-data images/ --calibrator entropy2 --json"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# An explicit callback keeps typer in multi-command mode: with a lone registered command it would
# otherwise run that command as the whole app, and `vision-quant build X` would break.
@app.callback()
def _group() -> None:
    """INT8 post-training quantization of YOLOv8 ONNX models."""


def _register_commands() -> None:
    from vision.cli import analysis as cli_analysis
    from vision.cli import build as cli_build

    cli_build.register(app)
    cli_analysis.register(app)


def main() -> None:
    _register_commands()
    app()


if __name__ == "__main__":
    main()

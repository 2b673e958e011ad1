"""`vision-quant`: a thin typer layer over the vision library API.

Each command lives in a module of its own (``build``, ``analysis``) that registers itself on the app; this file
only assembles them.
"""

from __future__ import annotations

from quant_common.cli import make_app
from vision.cli import analysis, build, cache, serving

app = make_app(
    "vision-quant",
    help=(
        "INT8 post-training quantization of YOLOv8 ONNX models with TensorRT's calibration algorithms.\n\n"
        "Examples:\n\n"
        "  vision-quant build yolov8n.onnx --calib-data images/ --out build/\n\n"
        "  vision-quant build yolov8n.onnx --calib-data images/ --calibrator entropy2 --json\n\n"
        "  vision-quant package build/ && vision-quant serve build/triton_repo"
    ),
    summary="INT8 post-training quantization of YOLOv8 ONNX models.",
    registrars=[build.register, analysis.register, serving.register, cache.register],
)


def main() -> None:
    app()

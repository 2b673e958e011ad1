"""Runtimes behind one ``Runner`` interface (Polygraphy's backend/ layout): ONNX Runtime, TensorRT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from quant_common.errors import QuantError
from vision.backends.base import Runner

BackendName = Literal["auto", "onnxruntime", "tensorrt"]
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def load_runner(path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None) -> Runner:
    """The runner for an artifact, chosen by its suffix: ``.onnx`` → ONNX Runtime, ``.engine/.plan`` → TensorRT.

    Nothing is loaded until the runner is activated. TensorRT is imported only for engines, and its absence is one
    clear line (``MissingDependencyError``), never a traceback.
    """
    artifact = Path(path)
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise QuantError(f"unknown backend '{backend}'", "choose auto, onnxruntime or tensorrt")
    if not artifact.is_file():
        raise QuantError(f"model file not found: {artifact}", "check the path")
    suffix = artifact.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        if backend == "tensorrt":
            raise QuantError(f"--backend tensorrt runs serialized engines, not ONNX files ({artifact.name})",
                             "build an engine first (vision-quant build --backend tensorrt) or use onnxruntime")
        from vision.backends.onnxrt import OnnxrtRunner

        return OnnxrtRunner(artifact, threads=threads)
    if suffix in ENGINE_SUFFIXES:
        if backend == "onnxruntime":
            raise QuantError(f"ONNX Runtime cannot run the TensorRT engine {artifact.name}",
                             "pass the .onnx model instead, or --backend tensorrt")
        from vision.backends.trt import TrtRunner, import_tensorrt

        import_tensorrt(f"running the TensorRT engine {artifact.name}")
        return TrtRunner(artifact)
    raise QuantError(f"cannot tell what kind of model {artifact.name} is (suffix '{artifact.suffix}')",
                     "pass an .onnx model or a TensorRT .engine/.plan file")

"""Backend choice, the one place that knows which runtimes exist.

``load_runner`` picks the runtime for an artifact by its file suffix. ``select_backend`` picks what a build targets:
the version its calibration cache header must name, and whether (and how) it builds an engine. The pipeline only
calls these; it never asks which backend it has.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal, get_args

from quant_common.errors import QuantError, is_importable
from vision.backends.base import Runner
from vision.backends.engine import EngineRequest, EngineResult, build_trt_engine
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.openvino import OpenvinoRunner, import_openvino, signed_activation_qdq
from vision.backends.trt import TrtRunner, import_tensorrt
from vision.backends.upstream import DEFAULT_TRT_VERSION, tensorrt_facts

__all__ = ["DEFAULT_TRT_VERSION"]

BackendName = Literal["auto", "onnxruntime", "openvino", "tensorrt"]
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def onnx_backend(backend: str = "auto", artifact: Path | None = None) -> str:
    """The runtime for an ONNX file: ``auto`` is OpenVINO where installed (the fast CPU runtime), else ONNX Runtime,
    and ONNX Runtime for Q/DQ models with int8 activations, which OpenVINO misreads (``model.int8.onnx``; run
    ``model.int8.ov.onnx`` with OpenVINO instead). TensorRT runs engines, not ONNX files."""
    if backend == "auto":
        if not is_importable("openvino"):
            return "onnxruntime"
        return "onnxruntime" if artifact is not None and signed_activation_qdq(artifact) else "openvino"
    return backend


def load_runner(path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None,
                precision: str = "f32") -> Runner:
    """The runner for an artifact, chosen by its suffix: ``.onnx`` → OpenVINO or ONNX Runtime (``auto``: OpenVINO
    where installed, see ``onnx_backend``), ``.engine/.plan`` → TensorRT. ``precision`` is OpenVINO's float hint
    (f32 unless asked).

    Nothing is loaded until the runner is activated. TensorRT and OpenVINO are imported only when chosen, and their
    absence is one clear line (``MissingDependencyError``), never a traceback.
    """
    artifact = Path(path)
    if backend not in get_args(BackendName):
        raise QuantError(f"unknown backend '{backend}'", "choose auto, onnxruntime, openvino or tensorrt")
    if not artifact.is_file():
        raise QuantError(f"model file not found: {artifact}", "check the path")
    suffix = artifact.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        if backend == "tensorrt":
            raise QuantError(f"--backend tensorrt runs serialized engines, not ONNX files ({artifact.name})",
                             "build an engine first (vision-quant build --backend tensorrt) or use onnxruntime")
        if onnx_backend(backend, artifact) == "openvino":
            import_openvino(f"running {artifact.name} with --backend openvino")
            return OpenvinoRunner(artifact, threads=threads, precision=precision)  # type: ignore[arg-type]
        return OnnxrtRunner(artifact, threads=threads)
    if suffix in ENGINE_SUFFIXES:
        if backend in ("onnxruntime", "openvino"):
            name = "ONNX Runtime" if backend == "onnxruntime" else "OpenVINO"
            raise QuantError(f"{name} cannot run the TensorRT engine {artifact.name}",
                             "pass the .onnx model instead, or --backend tensorrt")
        import_tensorrt(f"running the TensorRT engine {artifact.name}")
        return TrtRunner(artifact)
    raise QuantError(f"cannot tell what kind of model {artifact.name} is (suffix '{artifact.suffix}')",
                     "pass an .onnx model or a TensorRT .engine/.plan file")


class BuildBackend(ABC):
    """What a build targets: the TensorRT version its calibration cache names, and its engine step."""

    name: ClassVar[str]
    makes_engine: ClassVar[bool]

    @abstractmethod
    def target_version(self, requested: str | None) -> str:
        """The TensorRT the build targets: the installed one, else ``requested`` (``--trt-version``), else
        ``DEFAULT_TRT_VERSION``."""

    def cache_header_version(self, requested: str | None) -> str:
        """The TensorRT version the calibration cache header names: the target where it reads caches; on 11+
        (no calibration caches) the newest one that does, the cache then only carrying scales to the Q/DQ model."""
        return tensorrt_facts().cache_version(self.target_version(requested))

    @abstractmethod
    def build_engine(self, request: EngineRequest) -> EngineResult | None:
        """The engine for ``request``, or None where this backend runs the ONNX models themselves."""


def installed_tensorrt() -> str | None:
    """MAJOR.MINOR.PATCH of the TensorRT installed here, or None (tensorrt-stubs alone is not TensorRT)."""
    if not is_importable("tensorrt"):
        return None
    return ".".join(import_tensorrt().__version__.split(".")[:3])


def target_source(requested: str | None) -> str:
    """Where the target TensorRT version comes from, for build.json."""
    return "--trt-version" if requested else ("installed" if installed_tensorrt() else "default")


class OnnxruntimeBuild(BuildBackend):
    """ONNX Runtime runs the Q/DQ ONNX models as written: no engine. The cache is for TensorRT elsewhere: the
    version asked for, else the TensorRT installed here, else the default."""

    name = "onnxruntime"
    makes_engine = False

    def target_version(self, requested: str | None) -> str:
        return requested or installed_tensorrt() or DEFAULT_TRT_VERSION

    def build_engine(self, request: EngineRequest) -> EngineResult | None:
        return None


class TensorrtBuild(BuildBackend):
    """The installed TensorRT builds ``model.<precision>.engine``; the cache header must name that TensorRT."""

    name = "tensorrt"
    makes_engine = True

    def target_version(self, requested: str | None) -> str:
        # The header must name the TensorRT that reads it, or TensorRT ignores the cache silently (#1378).
        installed = ".".join(import_tensorrt().__version__.split(".")[:3])
        if requested is not None and requested != installed:
            raise QuantError(f"--trt-version {requested} differs from the installed TensorRT {installed}",
                             "drop --trt-version when building engines, or use --backend onnxruntime")
        return installed

    def build_engine(self, request: EngineRequest) -> EngineResult | None:
        return build_trt_engine(request)


class OpenvinoBuild(OnnxruntimeBuild):
    """OpenVINO runs the Q/DQ ONNX models (``model.int8.ov.onnx`` is written by every build): no engine; choosing it
    checks that OpenVINO is installed."""

    name = "openvino"

    def cache_header_version(self, requested: str | None) -> str:
        import_openvino("vision-quant build --backend openvino")
        return super().cache_header_version(requested)


_BUILD_BACKENDS: dict[str, type[BuildBackend]] = {cls.name: cls for cls in (OnnxruntimeBuild, OpenvinoBuild,
                                                                            TensorrtBuild)}


def resolve_backend(name: str) -> str:
    """``auto`` → TensorRT where it is installed, else ONNX Runtime; ``tensorrt`` without it is one line."""
    if name == "auto":
        return "tensorrt" if is_importable("tensorrt") else "onnxruntime"
    if name == "tensorrt" and not is_importable("tensorrt"):
        import_tensorrt()  # raises the one-line MissingDependencyError
    return name


def select_backend(name: str) -> BuildBackend:
    resolved = resolve_backend(name)
    if resolved not in _BUILD_BACKENDS:
        raise QuantError(f"unknown backend '{name}'", "choose auto, onnxruntime, openvino or tensorrt")
    return _BUILD_BACKENDS[resolved]()

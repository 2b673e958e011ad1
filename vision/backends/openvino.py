"""OpenVINO: the fast CPU runtime for FP32 and INT8 (Q/DQ) ONNX models, beside ONNX Runtime (the reference).

OpenVINO reads the ONNX file directly (no conversion step, nothing written). Its CPU plugin picks bf16 by default
on CPUs with AVX512-BF16/AMX, which changes the numbers; we pass the precision hint explicitly (``f32`` unless
asked) and report it, so an FP32 row means FP32. INT8 comes from the Q/DQ nodes in the model (OpenVINO's
low-precision transformations turn DequantizeLinear → Conv into integer convolutions); the hint does not apply to
those layers.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quant_common.errors import QuantError, require
from vision.backends.base import Runner, TensorSpec

OV_INSTALL = "pip install openvino"
Precision = Literal["f32", "bf16", "f16"]
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")


def import_openvino(purpose: str = "--backend openvino") -> Any:
    return require("openvino", purpose=purpose, install=OV_INSTALL)


def _first_line(exc: BaseException) -> str:
    """OpenVINO's messages are multi-line C++ traces; the useful part is the line naming the op or the file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # e.g. "OpConversionFailure: ... Unsupported operation ... of type 'Foo'"
        lowered = line.lower()
        if "unsupported" in lowered or "not supported" in lowered or "cannot create" in lowered:
            return line[:300]
    return (lines[-1] if lines else exc.__class__.__name__)[:300]


def compile_model(model_path: Path, precision: Precision = "f32", threads: int | None = None,
                  perf_counters: bool = False) -> Any:
    """``ov.CompiledModel`` for the CPU with an explicit precision hint, latency mode and ``threads`` streams' worth
    of threads; every OpenVINO failure (unreadable file, unsupported op) becomes one line."""
    ov = import_openvino()
    if precision not in PRECISIONS:
        raise QuantError(f"unknown OpenVINO precision '{precision}'", f"choose one of {', '.join(PRECISIONS)}")
    if not model_path.is_file():
        raise QuantError(f"model file not found: {model_path}", "check the path")
    core = ov.Core()
    try:
        model = core.read_model(str(model_path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError/GeneralFailure/OpConversionFailure
        raise QuantError(f"OpenVINO cannot read {model_path.name}: {_first_line(exc)}",
                         "check that the file is a complete ONNX model, or use --backend onnxruntime") from exc
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if perf_counters:  # per-layer timings and kernel names (layer_profile)
        config["PERF_COUNT"] = True
    try:
        return core.compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001
        raise QuantError(f"OpenVINO cannot compile {model_path.name} for the CPU: {_first_line(exc)}",
                         "use --backend onnxruntime for this model") from exc


def signed_activation_qdq(model_path: Path) -> int:
    """How many QuantizeLinear nodes quantize an activation to int8 (zero point of type int8), e.g. in modelopt's
    TensorRT layout. OpenVINO 2026.4 computes such a network wrongly (vision.artifacts.qdq_ov: class scores lose
    ~13 dB, mAP50-95 -8.5 points on YOLOv8n), so ``--backend auto`` runs those files with ONNX Runtime."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: let the chosen runtime report it
        return 0
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
               and len(n.input) > 2 and inits.get(n.input[2]) == onnx.TensorProto.INT8)


def _spec(port: Any) -> TensorSpec:
    shape = tuple(int(d.get_length()) if d.is_static else None for d in port.get_partial_shape())
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())
    except Exception:  # noqa: BLE001 - element types numpy lacks (bf16): report them as float32
        dtype = np.dtype(np.float32)
    return TensorSpec(port.get_any_name(), shape, dtype)


class OpenvinoRunner(Runner):
    """Runs an ONNX file (FP32 or INT8 Q/DQ) with OpenVINO's CPU plugin; ``precision`` is the float hint."""

    name = "openvino"

    def __init__(self, model_path: str | os.PathLike[str], threads: int | None = None,
                 precision: Precision = "f32") -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.threads = threads
        self.precision = precision
        self.compiled: Any = None
        self._request: Any = None
        self._outputs: list[Any] = []

    def activate_impl(self) -> None:
        self.compiled = compile_model(self.model_path, self.precision, self.threads)
        self._request = self.compiled.create_infer_request()
        self._outputs = list(self.compiled.outputs)

    def deactivate_impl(self) -> None:
        self._request = None
        self.compiled = None

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()})
        # copies: the request reuses its output buffers on the next call
        return {port.get_any_name(): np.array(results[port]) for port in self._outputs}

    def input_specs_impl(self) -> list[TensorSpec]:
        return [_spec(port) for port in self.compiled.inputs]

    def output_specs_impl(self) -> list[TensorSpec]:
        return [_spec(port) for port in self._outputs]

    @property
    def backend(self) -> str:
        return f"openvino[{self.precision}]"


def layer_profile(model: str | os.PathLike[str], precision: str = "f32", threads: int | None = None, runs: int = 5,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Where OpenVINO spends an inference, from its per-layer counters (``PERF_COUNT``): one row per executed layer,
    ``{"name", "type", "exec_type", "ms"}`` (mean over ``runs`` after a warm-up, random input of the model's static
    shapes). ``exec_type`` names the kernel: ``..._I8`` runs on 8-bit data, ``..._f32``/``_bf16`` in float."""
    compiled = compile_model(Path(model), precision, threads, perf_counters=True)  # type: ignore[arg-type]
    request = compiled.create_infer_request()
    rng = np.random.default_rng(seed)
    feeds = {port.get_any_name(): rng.random(tuple(port.get_shape()), dtype=np.float32) for port in compiled.inputs}
    request.infer(feeds)
    totals: dict[str, list[Any]] = {}
    for _ in range(runs):
        request.infer(feeds)
        for info in request.profiling_info:
            if info.status != info.Status.EXECUTED:
                continue
            row = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
            row[2] += info.real_time.total_seconds() * 1e3 / runs
    return [{"name": n, "type": t, "exec_type": e, "ms": round(ms, 4)} for n, (t, e, ms) in totals.items()]


def by_kernel(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows summed by (layer type, kernel), largest first, with each one's share of the total."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        group = groups[(row["type"], row["exec_type"])]
        group[0] += row["ms"]
        group[1] += 1
    total = sum(g[0] for g in groups.values()) or 1.0
    return sorted(({"type": t, "exec_type": e, "layers": int(n), "ms": round(ms, 3), "share": ms / total}
                   for (t, e), (ms, n) in groups.items()), key=lambda r: -r["ms"])

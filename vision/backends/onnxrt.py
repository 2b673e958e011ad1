"""ONNX Runtime: the embedded default runtime for FP32 and INT8 (Q/DQ) ONNX models on any machine."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from quant_common.errors import QuantError
from vision.backends.base import Runner, TensorSpec
from vision.backends.fp16_onnx import emulate_fp16_storage, has_fp16_qdq
from vision.graph import with_outputs
from vision.model import read_onnx

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # ORT's warnings about unused initializers are noise for users
    return options


def create_session(model: str | os.PathLike[str] | bytes, threads: int | None = None,
                   providers: Sequence[str] | None = None) -> Any:
    """An ``InferenceSession`` on CPU (or the given providers), with load errors turned into one line."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise QuantError(f"model file not found: {source}", "check the path")
    try:
        return ort.InferenceSession(source, sess_options=session_options(threads),
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # noqa: BLE001 - ORT raises several private exception types
        label = "the in-memory model" if isinstance(source, bytes) else source
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise QuantError(f"ONNX Runtime cannot load {label}: {first[:300]}",
                         "check that the file is a complete, valid ONNX model (re-export it if truncated)") from exc


class OnnxrtRunner(Runner):
    """Runs an ONNX model (FP32 or INT8 Q/DQ; a file or a loaded ``ModelProto``) with ONNX Runtime's CPU kernels.

    ``extra_outputs``: intermediate tensors returned by ``infer`` next to the model's outputs (statistics, per-layer
    SQNR); the session is built from ``vision.graph.with_outputs``, the model itself is left untouched.

    ``fp16``: how a Q/DQ model with FP16 float parts (the TensorRT layout for TensorRT >= 10) runs. ``auto`` and
    ``emulated``: FP32 arithmetic with every FP16 tensor rounded to FP16 (``emulate_fp16_storage``), because ONNX
    Runtime's CPU FP16 kernels are not TensorRT's; ``native``: ONNX Runtime's FP16 kernels. ``backend`` says which.
    """

    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike[str] | onnx.ModelProto, threads: int | None = None,
                 providers: Sequence[str] | None = None, extra_outputs: Sequence[str] = (),
                 fp16: Literal["auto", "native", "emulated"] = "auto") -> None:
        super().__init__()
        self.model = model if isinstance(model, onnx.ModelProto) else Path(model)
        self.threads = threads
        self.providers = providers
        self.extra_outputs = tuple(extra_outputs)
        self.fp16 = fp16
        self.fp16_emulated = False
        self.session: Any = None

    def activate_impl(self) -> None:
        source: Path | bytes
        loaded = self.model if isinstance(self.model, onnx.ModelProto) else None
        proto = loaded
        if self.fp16 != "native":
            loaded = loaded if loaded is not None else read_onnx(self.model)
            self.fp16_emulated = self.fp16 == "emulated" or has_fp16_qdq(loaded)
            if self.fp16_emulated:
                proto = emulate_fp16_storage(loaded)
        if self.extra_outputs:
            base = proto if proto is not None else (loaded if loaded is not None else read_onnx(self.model))
            source = with_outputs(base, self.extra_outputs).SerializeToString()
        elif proto is not None:
            source = proto.SerializeToString()
        else:
            assert isinstance(self.model, Path)
            source = self.model
        self.session = create_session(source, self.threads, self.providers)

    @property
    def backend(self) -> str:
        return f"{self.name}[fp16 emulated]" if self.fp16_emulated else self.name

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        # images arrive as float32; an FP16 export (and its Q/DQ models) takes float16
        types = {i.name: _ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        values = self.session.run(names, {k: v.astype(types[k], copy=False) if types.get(k) else v
                                          for k, v in feeds.items()})
        return dict(zip(names, values, strict=True))

    def input_specs_impl(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), np.dtype(_ORT_DTYPES.get(i.type, np.float32)))
                for i in self.session.get_inputs()]

    def output_specs_impl(self) -> list[TensorSpec]:
        return [TensorSpec(o.name, tuple(o.shape), np.dtype(_ORT_DTYPES.get(o.type, np.float32)))
                for o in self.session.get_outputs()]

    @property
    def device(self) -> str:
        providers = self.session.get_providers() if self.session is not None else ["CPUExecutionProvider"]
        return "cpu" if providers[0] == "CPUExecutionProvider" else providers[0]

"""Per-layer INT8 sensitivity, measured rather than guessed.

The FP32 model and the INT8 model run on the same images with every compute layer's output exposed, and each
layer's SQNR (signal-to-quantization-noise ratio, dB) is compared with the SQNR of its inputs. The difference is
the error that layer itself adds; ``vision.pipeline.mixed_precision`` keeps the layers adding the most in float.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from quant_common.errors import QuantError
from vision.backends.onnxrt import OnnxrtRunner
from vision.graph import compute_layers
from vision.model import read_onnx


@dataclass(frozen=True)
class LayerError:
    node: str
    op_type: str
    output: str
    sqnr_db: float  # of the layer's output in the INT8 model against FP32 (accumulated error)
    added_db: float  # SQNR lost in this layer: min SQNR of its inputs minus SQNR of its output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10·log10(‖ref‖² / ‖ref − cand‖²); +inf when identical."""
    ref = reference.astype(np.float64).ravel()
    noise = float(np.sum((ref - candidate.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def _run_exposed(model: onnx.ModelProto, names: list[str], feeds: Sequence[Mapping[str, np.ndarray]],
                 threads: int | None) -> list[dict[str, np.ndarray]]:
    with OnnxrtRunner(model, threads=threads, extra_outputs=names) as runner:
        return [{name: outputs[name] for name in names} for outputs in (runner.infer(dict(f)) for f in feeds)]


def layer_errors(fp32: onnx.ModelProto | str | os.PathLike[str], int8: onnx.ModelProto | str | os.PathLike[str],
                 feeds: Sequence[Mapping[str, np.ndarray]], threads: int | None = None) -> list[LayerError]:
    """SQNR of every compute layer's output in the INT8 model, most damaging layer (largest ``added_db``) first.

    ``fp32`` and ``int8``: loaded models (left unmodified) or files."""
    if not feeds:
        raise QuantError("layer sensitivity needs at least one input batch", "pass calibration images")
    fp32_model = fp32 if isinstance(fp32, onnx.ModelProto) else read_onnx(fp32)
    int8_model = int8 if isinstance(int8, onnx.ModelProto) else read_onnx(int8)
    produced = {o for n in int8_model.graph.node for o in n.output}
    graph_inputs = {i.name for i in fp32_model.graph.input}
    layers = [n for n in compute_layers(fp32_model) if n.output[0] in produced]
    activations = {n.input[0] for n in layers if n.input[0] in produced or n.input[0] in graph_inputs}
    names = sorted({n.output[0] for n in layers} | (activations - graph_inputs))
    ref_runs = _run_exposed(fp32_model, names, feeds, threads)
    int8_runs = _run_exposed(int8_model, names, feeds, threads)
    sqnr = {name: sqnr_db(np.concatenate([r[name].ravel() for r in ref_runs]),
                          np.concatenate([r[name].ravel() for r in int8_runs])) for name in names}
    result = []
    for node in layers:
        out_db = sqnr[node.output[0]]
        in_db = sqnr.get(node.input[0], float("inf"))  # the image input is exact in both
        added = (min(in_db, 99.0) - min(out_db, 99.0))
        result.append(LayerError(node.name, node.op_type, node.output[0], out_db, added))
    return sorted(result, key=lambda e: -e.added_db)

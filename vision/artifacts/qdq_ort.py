"""Q/DQ ONNX models from one set of activation scales, in two layouts.

- TensorRT layout (``model.int8.onnx``): modelopt.onnx places Q/DQ where TensorRT wants them and takes the
  activation scales from our calibration cache; weights get per-channel scales. TensorRT >= 10 (strongly typed) and
  ONNX Runtime both run it, but ORT runs it slower than FP32 (FACTS §4b: 72 ms vs 50 ms on YOLOv8n).
- ONNX Runtime layout (``model.int8.ort.onnx``): onnxruntime.quantization's QDQ placement, which ORT fuses into
  QLinearConv & co (22 ms). Activations are QUInt8 with zero point 128 and our symmetric scale amax/127, so both
  files quantize every shared tensor identically.

Both writers verify the result: every activation Q node must carry exactly our scale (float32 bit-exact).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quant_common.atomic import staged_file
from quant_common.errors import QuantError, is_importable

# Ops whose result needs no Q/DQ: what follows the last Conv/Gemm/MatMul of a detector is box decoding and the
# class Sigmoid, which collapse in INT8 (FACTS §2, Ultralytics keeps the head Sigmoid in FP32).
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


@dataclass
class QdqSummary:
    """What a writer produced and how it was checked."""

    path: Path
    layout: str
    activation_tensors: int = 0  # activations carrying a Q node
    matched_scales: int = 0  # of those, with exactly our scale
    per_channel_weights: int = 0
    per_tensor_weights: int = 0
    weight_storage: str = "int8"
    excluded_nodes: list[str] = field(default_factory=list)  # kept in float on request
    mismatched: list[str] = field(default_factory=list)


# -- graph analysis --------------------------------------------------------------------------------------------
def post_processing_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes after which no Conv/Gemm/MatMul follows (the decode tail), kept in float for ONNX Runtime.

    One pass in reverse topological order (ONNX requires nodes to be topologically sorted).
    """
    feeds_compute: set[str] = set()  # tensors from which a compute op is reachable
    tail: list[str] = []
    for node in reversed(model.graph.node):
        if node.op_type in COMPUTE_OPS or any(out in feeds_compute for out in node.output):
            feeds_compute.update(node.input)
        if node.op_type not in COMPUTE_OPS and not any(out in feeds_compute for out in node.output):
            tail.append(node.name)
    return tail[::-1]


def fold_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where ``Constant`` nodes and ``Identity`` of an initializer become initializers.

    torch.onnx exports identical weights once and re-shares them through Identity nodes (common for the all-zero
    biases of an untrained YOLOv8). onnxruntime.quantization then takes such a bias for an activation, gives it a
    u8 Q/DQ pair, and ORT can no longer fuse that Conv into QLinearConv.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    values = {i.name: i for i in folded.graph.initializer}
    keep = []
    for node in folded.graph.node:
        tensor = None
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(values[node.input[0]])
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        folded.graph.initializer.append(tensor)
        values[tensor.name] = tensor
    del folded.graph.node[:]
    folded.graph.node.extend(keep)
    return folded


def ort_op_types() -> list[str]:
    """The op types onnxruntime.quantization quantizes by default (QDQ plus QOperator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def float_activations(model: onnx.ModelProto) -> set[str]:
    """Names of float activation tensors (graph inputs and node outputs with a known float type, or unknown)."""
    known: dict[str, int] = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        known[vi.name] = vi.type.tensor_type.elem_type
    initializers = {i.name for i in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in initializers}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.update(o for o in node.output if o)
    return {n for n in names if known.get(n, onnx.TensorProto.FLOAT) in _FLOAT}


def ort_quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """Activations the ONNX Runtime layout may quantize: float inputs/outputs of quantizable, non-tail nodes.

    Collect statistics for all of them so that every one gets our scale (none falls back to ORT's own range).
    """
    model = fold_constant_nodes(model)
    ops, tail = set(ort_op_types()), set(post_processing_nodes(model))
    activations = float_activations(model)
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ops and node.name not in tail:
            wanted.update(t for t in list(node.input) + list(node.output) if t in activations)
    return sorted(wanted)


def activation_q_scales(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{tensor: (scale, zero_point)}`` of every QuantizeLinear applied to an activation (not a weight)."""
    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[0] not in constants:
            scale = value(node.input[1])
            if scale is not None:
                zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                found[node.input[0]] = (scale, zp)
    return found


# ORT gives the outputs of these ops their input's scale (their kernels cannot rescale), as TensorRT does.
_SCALE_PRESERVING = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice",
                               "MaxPool", "Resize", "Pad", "Gather", "GatherElements", "TopK", "AveragePool",
                               "Identity"})


def _check_scales(model: onnx.ModelProto, scales: Mapping[str, float], summary: QdqSummary,
                  zero_point: int | None) -> None:
    producer = {out: node for node in model.graph.node for out in node.output}
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}

    def allowed(tensor: str) -> set[np.float32]:
        """Our scale for ``tensor`` and, through scale-preserving ops, for the tensors it was copied from."""
        found: set[np.float32] = set()
        for _ in range(64):
            if tensor in scales:
                found.add(np.float32(scales[tensor]))
            node = producer.get(tensor)
            if node is None or node.op_type not in _SCALE_PRESERVING or not node.input:
                break
            tensor = node.input[0]
            tensor = q_source.get(dq_source.get(tensor, ""), dq_source.get(tensor, tensor))
        return found

    for tensor, (scale, zp) in activation_q_scales(model).items():
        summary.activation_tensors += 1
        ok = scale.size == 1 and np.float32(scale.reshape(-1)[0]) in allowed(tensor)
        if ok and zero_point is not None:
            ok = zp is not None and int(zp.reshape(-1)[0]) == zero_point
        if ok:
            summary.matched_scales += 1
        else:
            summary.mismatched.append(tensor)
    if summary.mismatched:
        raise QuantError(f"{summary.layout} Q/DQ model does not use the calibrated scale for "
                         f"{len(summary.mismatched)} tensor(s), e.g. '{summary.mismatched[0]}'",
                         "report this model to the vision-quant maintainers (rerun with --force to recalibrate)")


def _count_weight_granularity(model: onnx.ModelProto, summary: QdqSummary) -> None:
    """Count weights quantized per channel vs per tensor: either stored INT8 → DQ (ORT) or FP32 → Q → DQ (modelopt)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        source = inits.get(node.input[0]) if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None
        is_weight = source is not None and len(source.dims) >= 2 and (
            node.op_type == "QuantizeLinear" or source.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
        if not is_weight:
            continue
        scale = inits.get(node.input[1])
        if scale is not None and numpy_helper.to_array(scale).size > 1:
            summary.per_channel_weights += 1
        else:
            summary.per_tensor_weights += 1


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """modelopt and onnxruntime.quantization log and print a lot; keep stdout clean for ``--json``."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(previous)


# -- ONNX Runtime layout ---------------------------------------------------------------------------------------
class _FeedsReader:
    """onnxruntime.quantization's CalibrationDataReader over a fixed list of feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = next(self._it, None)
        return dict(feeds) if feeds is not None else None

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def ort_overrides(model: onnx.ModelProto, scales: Mapping[str, float]) -> dict[str, list[dict[str, np.ndarray]]]:
    """TensorQuantOverrides giving every tensor ORT quantizes our scale and zero point 128 (u8 activations)."""
    return {name: [{"scale": np.array(scales[name], dtype=np.float32), "zero_point": np.array(128, dtype=np.uint8)}]
            for name in ort_quantized_tensors(model) if name in scales}


def write_ort_qdq(model_path: Path, scales: Mapping[str, float], sample_feeds: Sequence[Mapping[str, np.ndarray]],
                  out_path: Path, *, nodes_to_exclude: Sequence[str] = (), per_channel: bool = True,
                  weight_storage: str = "auto") -> QdqSummary:
    """``model.int8.ort.onnx``: activations QUInt8 (zp 128, our scale), weights per output channel.

    Weights are symmetric INT8 with scale max|w_c|/127 (as TensorRT/modelopt quantize them); ``weight_storage``
    ``uint8`` stores them as q+128 with zero point 128, which ORT computes exactly on CPUs without VNNI
    (``vision.artifacts.qdq_weights``); ``auto`` picks by this CPU. ``nodes_to_exclude`` stay float while their neighbours
    stay quantized (their inputs are dequantized, their outputs quantized again for the next INT8 layer).
    ``sample_feeds`` only satisfy quantize_static's calibration pass, whose ranges our overrides replace; one batch
    is enough.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from vision.artifacts.qdq_weights import resolve_weight_storage, store_weights_uint8

    original = onnx.load(str(model_path))
    names = {n.name for n in original.graph.node}
    model = fold_constant_nodes(original)
    unknown = sorted(set(nodes_to_exclude) - names)
    if unknown:
        raise QuantError(f"node(s) to keep in float not in {model_path.name}: {', '.join(unknown[:3])}",
                         "pick node names from the model graph (e.g. from build.json's mixed_precision)")
    overrides = ort_overrides(model, scales)
    missing = [t for t in ort_quantized_tensors(model) if t not in scales]
    tail = post_processing_nodes(model)
    # A node whose activation has no scale of ours stays float rather than taking ORT's range from one batch.
    excluded = set(tail) | set(nodes_to_exclude) | {
        n.name for n in model.graph.node if any(t in missing for t in list(n.input) + list(n.output))}
    summary = QdqSummary(path=out_path, layout="onnxruntime")
    storage = resolve_weight_storage(weight_storage)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="vq-ortq-") as tmp, _quiet_third_party():
        tmp_out, tmp_in = Path(tmp) / "model.int8.ort.onnx", Path(tmp) / "model.folded.onnx"
        onnx.save(model, str(tmp_in))
        try:
            quantize_static(str(tmp_in), str(tmp_out), _FeedsReader(sample_feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=sorted(excluded),
                            extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
                                           "WeightSymmetric": True,
                                           # output features: axis 1 of a MatMul weight (K x N)
                                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises bare exceptions
            raise QuantError(f"onnxruntime.quantization could not quantize {model_path.name}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}",
                             "check the model runs in ONNX Runtime; try --simplify") from exc
        quantized = onnx.load(str(tmp_out))
        _check_scales(quantized, scales, summary, zero_point=128)
        _count_weight_granularity(quantized, summary)
        summary.weight_storage = storage
        summary.excluded_nodes = sorted(set(nodes_to_exclude))
        if storage == "uint8" and store_weights_uint8(quantized):
            onnx.save(quantized, str(tmp_out))
        with staged_file(out_path) as staged:
            shutil.copyfile(tmp_out, staged)
    return summary


# -- TensorRT layout -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _trt_availability_as_importable() -> Iterator[None]:
    """modelopt decides "TensorRT present" from a bare ``import tensorrt``, which the stub-only namespace package
    of tensorrt-stubs satisfies; it then crashes on ``trt.Logger``. Tell it the truth for the duration of the call."""
    from modelopt.onnx import trt_utils

    previous = trt_utils.TRT_PYTHON_AVAILABLE
    trt_utils.TRT_PYTHON_AVAILABLE = previous and is_importable("tensorrt")
    try:
        yield
    finally:
        trt_utils.TRT_PYTHON_AVAILABLE = previous


def write_trt_qdq(model_path: Path, cache_path: Path, scales: Mapping[str, float],
                  sample_feeds: Sequence[Mapping[str, np.ndarray]], out_path: Path, *,
                  nodes_to_exclude: Sequence[str] = ()) -> QdqSummary:
    """``model.int8.onnx`` via modelopt.onnx with activation scales read from our TensorRT calibration cache.

    ``nodes_to_exclude`` get no Q/DQ of their own (modelopt's ``nodes_to_exclude``, matched by exact name), so a
    strongly typed TensorRT build runs them in float.

    modelopt monkey-patches onnxruntime.quantization for the whole process (ort_patching.patch_ort_modules), after
    which quantize_static misbehaves ("Quantization parameters are not specified for param images"). It therefore
    runs in a child interpreter (subprocess, not multiprocessing: spawn would re-run the caller's main script);
    the extra start-up costs about 2 s.
    """
    from quant_common.errors import require

    require("modelopt.onnx.quantization", purpose="the TensorRT-style Q/DQ model",
            install="pip install nvidia-modelopt onnx-graphsurgeon")
    summary = QdqSummary(path=out_path, layout="tensorrt")
    with tempfile.TemporaryDirectory(prefix="vq-mtq-") as tmp:
        # modelopt writes intermediate files beside its input: give it a private copy.
        src, data, tmp_out = Path(tmp) / "model.onnx", Path(tmp) / "calib.npz", Path(tmp) / "model.int8.onnx"
        shutil.copyfile(model_path, src)
        np.savez(data, **{k: np.concatenate([f[k] for f in sample_feeds]) for k in sample_feeds[0]})
        exclude_file = Path(tmp) / "exclude.json"
        exclude_file.write_text(json.dumps(sorted(set(nodes_to_exclude))), encoding="utf-8")
        problem = _run_modelopt_child(src, cache_path, data, tmp_out, exclude_file)
        if problem:
            raise QuantError(f"modelopt.onnx could not quantize {model_path.name}: {problem}",
                             "check the model runs in ONNX Runtime; try --simplify")
        if not tmp_out.is_file():
            raise QuantError(f"modelopt.onnx wrote no quantized model for {model_path.name} (nothing to quantize?)",
                             "check that the model has Conv/Gemm/MatMul layers")
        quantized = onnx.load(str(tmp_out))
        _check_scales(quantized, scales, summary, zero_point=0)
        _count_weight_granularity(quantized, summary)
        summary.excluded_nodes = sorted(set(nodes_to_exclude))
        with staged_file(out_path) as staged:
            shutil.copyfile(tmp_out, staged)
    return summary


def _run_modelopt_child(src: Path, cache: Path, data: Path, out: Path, exclude: Path) -> str | None:
    """Run :func:`modelopt_child_main` in a fresh interpreter; None on success, else the one-line problem."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    code = "import sys; from vision.artifacts.qdq_ort import modelopt_child_main; sys.exit(modelopt_child_main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(cache), str(data), str(out), str(exclude)],
                          env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          check=False)
    problem_file = out.with_suffix(".problem")
    if problem_file.is_file():
        return problem_file.read_text(encoding="utf-8").strip() or "unknown error"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return f"child process exited with {proc.returncode}: {lines[-1] if lines else 'no message'}"
    return None


def modelopt_child_main(argv: Sequence[str]) -> int:
    """Child-process body (see write_trt_qdq); writes the problem to ``<out>.problem`` on failure."""
    src, cache, data, out, exclude = argv
    excluded = json.loads(Path(exclude).read_text(encoding="utf-8"))
    logging.disable(logging.WARNING)
    import modelopt.onnx.quantization as mq

    with np.load(data) as arrays:
        feeds = {k: arrays[k] for k in arrays.files}
    try:
        with _trt_availability_as_importable():
            mq.quantize(src, quantize_mode="int8", calibration_data=feeds, calibration_method="max",
                        calibration_cache_path=cache, calibration_eps=["cpu"], high_precision_dtype="fp32",
                        output_path=out, log_level="ERROR",
                        # modelopt matches these as regular expressions: exact names only
                        nodes_to_exclude=[re.escape(name) + "$" for name in excluded] or None)
    except Exception as exc:  # noqa: BLE001 - modelopt raises assorted errors
        Path(out).with_suffix(".problem").write_text(
            str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, encoding="utf-8")
        return 1
    return 0

"""``model.int8.onnx``: the TensorRT layout of the Q/DQ model.

modelopt.onnx places Q/DQ where TensorRT wants them and takes the activation scales from our calibration cache;
weights get per-channel scales. Layers left unquantized run in ``high_precision_dtype``: a strongly typed TensorRT
network runs exactly the ONNX's types, so FP32 there would make the INT8 engine slower than the FP16 one
(NVIDIA/TensorRT#993); FP16 is the default for a target with strongly typed networks (``trt_float_dtype``; graph I/O
stays FP32). TensorRT >= 10 (strongly typed) and ONNX Runtime both run it (ORT slower than FP32: 72 ms against
50-56 ms on YOLOv8n 640; ``vision.artifacts.qdq_ort`` is the layout for ORT; an FP16 one is evaluated with its FP16
tensors emulated in FP32 arithmetic, ``vision.backends.fp16_onnx.emulate_fp16_storage``). modelopt drops the
export's ``metadata_props`` (class names, imgsz, stride): they are copied back.
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
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from quant_common.atomic import staged_file
from quant_common.errors import QuantError, is_importable, require
from vision.artifacts.qdq_verify import QdqSummary, check_scales, count_weight_granularity
from vision.backends.upstream import tensorrt_facts
from vision.model import carry_metadata

FloatDtype = Literal["fp16", "fp32"]


def trt_float_dtype(choice: str, target_version: str, *, half: bool = False) -> FloatDtype:
    """The float type of what a TensorRT-layout model leaves unquantized (modelopt's ``high_precision_dtype``; the
    one decision every writer of TensorRT float regions uses, the mixed-precision search's included).

    ``auto``: FP16 where the target builds the model as a strongly typed network (TensorRT >= 10), which runs the
    ONNX's types as written, so FP32 there would make INT8 slower than FP16 (NVIDIA/TensorRT#993); FP16 also for an
    FP16 export; else FP32 (TensorRT 8.6 builds Q/DQ models weakly typed, with its own --fp16)."""
    if choice == "auto":
        return "fp16" if half or tensorrt_facts().qdq_high_precision(target_version) == "fp16" else "fp32"
    if choice not in ("fp16", "fp32"):
        raise QuantError(f"unknown TensorRT float type '{choice}'", "use auto, fp16 or fp32")
    return "fp16" if choice == "fp16" else "fp32"


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
                  nodes_to_exclude: Sequence[str] = (), high_precision_dtype: str = "fp32") -> QdqSummary:
    """``model.int8.onnx`` via modelopt.onnx with activation scales read from our TensorRT calibration cache.

    ``nodes_to_exclude`` get no Q/DQ of their own (modelopt's ``nodes_to_exclude``, matched by exact name), so a
    strongly typed TensorRT build runs them in float. ``high_precision_dtype`` (modelopt's: fp32 | fp16) is the type
    of everything left unquantized: fp16 for an FP16 export, as TensorRT would run it.

    modelopt monkey-patches onnxruntime.quantization for the whole process (ort_patching.patch_ort_modules), after
    which quantize_static misbehaves ("Quantization parameters are not specified for param images"). It therefore
    runs in a child interpreter (subprocess, not multiprocessing: spawn would re-run the caller's main script);
    the extra start-up costs about 2 s. It reads ``model_path`` itself, which is why this writer takes the file.
    """
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
        problem = _run_modelopt_child(src, cache_path, data, tmp_out, exclude_file, high_precision_dtype)
        if problem:
            raise QuantError(f"modelopt.onnx could not quantize {model_path.name}: {problem}",
                             "check the model runs in ONNX Runtime; try --simplify")
        if not tmp_out.is_file():
            raise QuantError(f"modelopt.onnx wrote no quantized model for {model_path.name} (nothing to quantize?)",
                             "check that the model has Conv/Gemm/MatMul layers")
        quantized = onnx.load(str(tmp_out))
        changed = carry_metadata(onnx.load(str(model_path), load_external_data=False), quantized)
        if high_precision_dtype == "fp16":
            summary.fp16_casts_added = cast_mixed_float_inputs(quantized)
            changed = changed or bool(summary.fp16_casts_added)
        if changed:
            onnx.save(quantized, str(tmp_out))
        check_scales(quantized, scales, summary, zero_point=0)
        count_weight_granularity(quantized, summary)
        summary.excluded_nodes = sorted(set(nodes_to_exclude))
        summary.high_precision_dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(high_precision_dtype, "float32")
        with staged_file(out_path) as staged:
            shutil.copyfile(tmp_out, staged)
    return summary


# Ops whose float inputs share one type parameter (T): an FP32 input among FP16 ones is a type error.
_SAME_TYPE_OPS = frozenset({"Concat", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Equal", "Less",
                            "Greater", "LessOrEqual", "GreaterOrEqual"})


def cast_mixed_float_inputs(model: onnx.ModelProto) -> list[str]:
    """Where modelopt's FP16 conversion left a same-type op with FP32 and FP16 inputs, cast the FP32 ones to FP16;
    returns the nodes changed. Seen on end-to-end (NMS) exports: the class index Cast(to=FLOAT) feeding the final
    Concat stays FP32 while boxes and scores become FP16, and ONNX Runtime (and TensorRT's parser) reject the
    graph. Class indices are small integers, exact in FP16."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.input,
                                                               *inferred.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    changed: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        kinds = {types.get(name) for name in node.input if name}
        if node.op_type in _SAME_TYPE_OPS and f32 in kinds and f16 in kinds:
            for index, name in enumerate(node.input):
                if name and types.get(name) == f32:
                    cast = f"{name}__to_fp16_for_{node.name or node.op_type}"
                    nodes.append(onnx.helper.make_node("Cast", [name], [cast], to=f16, name=cast))
                    node.input[index] = cast
            changed.append(node.name)
        nodes.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _run_modelopt_child(src: Path, cache: Path, data: Path, out: Path, exclude: Path,
                        high_precision_dtype: str = "fp32") -> str | None:
    """Run :func:`modelopt_child_main` in a fresh interpreter; None on success, else the one-line problem."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    code = "import sys; from vision.artifacts.qdq_trt import modelopt_child_main; sys.exit(modelopt_child_main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(cache), str(data), str(out), str(exclude),
                           high_precision_dtype],
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
    src, cache, data, out, exclude, high_precision_dtype = argv
    excluded = json.loads(Path(exclude).read_text(encoding="utf-8"))
    logging.disable(logging.WARNING)
    import modelopt.onnx.quantization as mq

    with np.load(data) as arrays:
        feeds = {k: arrays[k] for k in arrays.files}
    try:
        with _trt_availability_as_importable():
            mq.quantize(src, quantize_mode="int8", calibration_data=feeds, calibration_method="max",
                        calibration_cache_path=cache, calibration_eps=["cpu"], high_precision_dtype=high_precision_dtype,
                        output_path=out, log_level="ERROR",
                        # modelopt matches these as regular expressions: exact names only
                        nodes_to_exclude=[re.escape(name) + "$" for name in excluded] or None)
    except Exception as exc:  # noqa: BLE001 - modelopt raises assorted errors
        Path(out).with_suffix(".problem").write_text(
            str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__, encoding="utf-8")
        return 1
    return 0

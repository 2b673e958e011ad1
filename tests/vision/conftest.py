"""Shared fixtures for vision tests: a tiny YOLOv8-like ONNX model built in code, and synthetic images."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TINY_INPUT = "images"
TINY_OUTPUT = "output0"
TINY_SIZE = 64


class _GraphBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"/model.{self.count}/{prefix}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: object) -> list[str]:
        base = self.name(op)
        names = [f"{base}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=base, **attrs))
        return names

    def conv_silu(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> str:
        scale = np.sqrt(2.0 / (c_in * k * k))
        weight = self.const("weight", (self.rng.standard_normal((c_out, c_in, k, k)) * scale).astype(np.float32))
        bias = self.const("bias", (self.rng.standard_normal(c_out) * 0.1).astype(np.float32))
        (conv,) = self.node("Conv", [x, weight, bias], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[k // 2] * 4)
        (sig,) = self.node("Sigmoid", [conv])
        (mul,) = self.node("Mul", [conv, sig])
        return mul


def tiny_detector_onnx(tmp_path: Path, *, dynamic_batch: bool = False, seed: int = 0,
                       name: str = "tiny_detector.onnx", opset: int = 17) -> Path:
    """A 64x64 YOLOv8-shaped detector (random weights, opset 17): Conv+SiLU blocks, a C2f-like Split/Concat,
    SPPF-like MaxPool, nearest Resize, a residual Add, a shape subgraph (Shape/Gather/Concat → Reshape), a MatMul
    and a ``[1, 8, 256]`` output whose class half goes through Sigmoid, like ``output0`` of an Ultralytics export.
    ``opset`` 11-12 writes Split sizes as an attribute and Resize's roi as a tensor, as exports at those opsets do."""
    g = _GraphBuilder(seed)

    def split(x: str, sizes: list[int], axis: int) -> list[str]:
        if opset < 13:
            return g.node("Split", [x], outputs=len(sizes), axis=axis, split=sizes)
        return g.node("Split", [x, g.const("split", np.array(sizes, np.int64))], outputs=len(sizes), axis=axis)

    x = g.conv_silu(TINY_INPUT, 3, 8, stride=2)            # 32x32
    x = g.conv_silu(x, 8, 16, stride=2)                    # 16x16
    left, right = split(x, [8, 8], axis=1)
    branch = g.conv_silu(right, 8, 8)
    (branch,) = g.node("Add", [branch, right])             # bottleneck shortcut
    (cat,) = g.node("Concat", [left, right, branch], axis=1)
    x = g.conv_silu(cat, 24, 16, k=1)
    (pooled,) = g.node("MaxPool", [x], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2])
    down = g.conv_silu(pooled, 16, 16, stride=2)           # 8x8
    roi = g.const("roi", np.zeros(0, np.float32)) if opset < 13 else ""
    (up,) = g.node("Resize", [down, roi, g.const("scales", np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    (cat2,) = g.node("Concat", [up, x], axis=1)            # 32 x 16x16
    head = g.conv_silu(cat2, 32, 16)
    weight = g.const("weight", (g.rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32))
    (pred,) = g.node("Conv", [head, weight], kernel_shape=[1, 1])
    # shape subgraph: [batch, 8, -1] computed from the tensor itself (int64, never calibrated)
    (shape,) = g.node("Shape", [pred])
    (batch,) = g.node("Gather", [shape, g.const("zero", np.array([0], np.int64))], axis=0)
    (target,) = g.node("Concat", [batch, g.const("rest", np.array([8, -1], np.int64))], axis=0)
    (flat,) = g.node("Reshape", [pred, target])            # [N, 8, 256]
    (moved,) = g.node("Transpose", [flat], perm=[0, 2, 1])  # [N, 256, 8]
    mix = g.const("mix", (np.eye(8) + g.rng.standard_normal((8, 8)) * 0.1).astype(np.float32))
    (mixed,) = g.node("MatMul", [moved, mix])
    (back,) = g.node("Transpose", [mixed], perm=[0, 2, 1])  # [N, 8, 256]
    box, cls = split(back, [4, 4], axis=1)
    (score,) = g.node("Sigmoid", [cls])
    g.nodes.append(helper.make_node("Concat", [box, score], [TINY_OUTPUT], axis=1, name="/model.head/Concat"))
    batch_dim: int | str = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        g.nodes, "tiny_detector",
        [helper.make_tensor_value_info(TINY_INPUT, TensorProto.FLOAT, [batch_dim, 3, TINY_SIZE, TINY_SIZE])],
        [helper.make_tensor_value_info(TINY_OUTPUT, TensorProto.FLOAT, [batch_dim, 8, 256])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8 if opset >= 15 else 7
    onnx.checker.check_model(model, full_check=True)
    path = Path(tmp_path) / name
    onnx.save(model, path)
    return path


def synthetic_images(directory: Path, count: int, *, size: tuple[int, int] = (80, 96), seed: int = 0) -> list[Path]:
    """``count`` PNGs with a smooth background and a few bright rectangles (enough structure for calibration)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for index in range(count):
        base = (np.sin(xx / rng.uniform(5, 20)) + np.cos(yy / rng.uniform(5, 20))) * 40 + rng.uniform(60, 160)
        image = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 8, (h, w, 3))
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
            image[y0:y0 + rng.integers(5, 20), x0:x0 + rng.integers(5, 20)] = rng.uniform(0, 255, 3)
        path = directory / f"img_{index:03d}.png"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def image_batches(count: int, *, seed: int = 0, size: int = TINY_SIZE) -> np.ndarray:
    """``count`` NCHW float32 inputs in [0, 1] (structured noise) without touching the disk."""
    rng = np.random.default_rng(seed)
    base = rng.random((count, 3, size // 8, size // 8)).astype(np.float32)
    images = np.kron(base, np.ones((1, 1, 8, 8), np.float32))
    return np.clip(images + rng.normal(0, 0.05, images.shape).astype(np.float32), 0, 1)


def modelopt_function(relative_path: str, name: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """A function of the installed nvidia-modelopt, compiled from its own source file with ``namespace`` as globals.

    Importing ``modelopt.torch.quantization`` / ``modelopt.onnx.quantization`` pulls torch, transformers and
    onnxruntime patches (~15 s of CPU on the CI machine) while the functions we compare against need only numpy,
    scipy or struct. Nothing is re-implemented: the code under test is modelopt's, byte for byte.
    """
    spec = importlib.util.find_spec("modelopt")
    if spec is None or spec.origin is None:
        pytest.skip("nvidia-modelopt is not installed")
    source = Path(spec.origin).parent / relative_path
    tree = ast.parse(source.read_text(encoding="utf-8"))
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    scope = dict(namespace)
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(source), "exec"), scope)  # noqa: S102
    return cast(Callable[..., Any], scope[name])


@pytest.fixture
def tiny_detector(tmp_path: Path) -> Path:
    return tiny_detector_onnx(tmp_path)


@pytest.fixture
def tiny_detector_dynamic(tmp_path: Path) -> Path:
    return tiny_detector_onnx(tmp_path, dynamic_batch=True, name="tiny_detector_dynamic.onnx")


def _anchors(output: onnx.ValueInfoProto) -> int:
    return output.type.tensor_type.shape.dim[2].dim_value


def with_nms_tail(detector: Path, name: str = "tiny_e2e.onnx", max_det: int = 20, conf: float = 0.25,
                  out_dir: Path | None = None) -> Path:
    """``detector`` (raw ``[1, 4+nc, N]`` head, xywh boxes) ending in NMS like an Ultralytics ``nms=True`` export:
    boxes to xyxy, ONNX NonMaxSuppression over all classes, the kept rows (x1, y1, x2, y2, score, class) gathered
    and zero-padded to ``[1, max_det, 6]``."""
    model = onnx.load(detector)
    graph = model.graph
    raw = graph.output[0].name
    channels = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    head = f"{raw}_raw"
    for node in graph.node:
        node.output[:] = [head if o == raw else o for o in node.output]
    consts = {
        "nms/xyxy": np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]], np.float32),
        "nms/split": np.array([4, channels - 4], np.int64), "nms/max": np.array([max_det], np.int64),
        "nms/iou": np.array([0.7], np.float32), "nms/conf": np.array([conf], np.float32),
        "nms/zero": np.array([0], np.int64), "nms/one": np.array([1], np.int64), "nms/two": np.array([2], np.int64),
        "nms/rows": np.array([max_det], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())

    def node(op: str, inputs: list[str], outputs: list[str], **attrs: object) -> None:
        graph.node.append(helper.make_node(op, inputs, outputs, name=f"/nms/{outputs[0]}", **attrs))

    node("Transpose", [head], ["rows"], perm=[0, 2, 1])                     # [1, N, 4+nc]
    node("Split", ["rows", "nms/split"], ["xywh", "cls_scores"], axis=2)
    node("MatMul", ["xywh", "nms/xyxy"], ["xyxy"])                         # [1, N, 4]
    node("Transpose", ["cls_scores"], ["scores_by_class"], perm=[0, 2, 1])  # [1, nc, N]
    node("NonMaxSuppression", ["xyxy", "scores_by_class", "nms/max", "nms/iou", "nms/conf"], ["selected"])
    node("Slice", ["selected", "nms/one", "nms/two", "nms/one"], ["class_index"])  # [K, 1]
    node("Slice", ["selected", "nms/two", "nms/rows", "nms/one"], ["box_index"])     # [K, 1] (end clipped)
    node("Squeeze", ["box_index", "nms/one"], ["box_index_1d"])
    node("Squeeze", ["xyxy", "nms/zero"], ["xyxy_2d"])
    node("Gather", ["xyxy_2d", "box_index_1d"], ["kept_boxes"], axis=0)    # [K, 4]
    node("GatherND", ["scores_by_class", "selected"], ["kept_scores_1d"])   # [K]
    node("Unsqueeze", ["kept_scores_1d", "nms/one"], ["kept_scores"])
    node("Cast", ["class_index"], ["kept_classes"], to=TensorProto.FLOAT)
    node("Concat", ["kept_boxes", "kept_scores", "kept_classes"], ["all_dets"], axis=1)  # [K, 6]
    node("Shape", ["kept_scores_1d"], ["candidates"])
    node("Min", ["candidates", "nms/rows"], ["top_k"])
    node("TopK", ["kept_scores_1d", "top_k"], ["top_scores", "top_index"])  # the best max_det rows, best first
    node("Gather", ["all_dets", "top_index"], ["dets"], axis=0)
    node("Shape", ["dets"], ["dets_shape"])
    node("Gather", ["dets_shape", "nms/zero"], ["kept"], axis=0)
    node("Sub", ["nms/rows", "kept"], ["missing"])
    node("Concat", ["nms/zero", "nms/zero", "missing", "nms/zero"], ["pads"], axis=0)
    node("Pad", ["dets", "pads"], ["padded"])                               # [max_det, 6]
    node("Unsqueeze", ["padded", "nms/zero"], [raw])                        # [1, max_det, 6]
    # the raw head's shape, as shape inference finds it on real exports (here a computed Reshape hides it)
    graph.value_info.append(helper.make_tensor_value_info(head, TensorProto.FLOAT, [1, channels, None]))
    graph.value_info[-1].type.tensor_type.shape.dim[2].dim_value = _anchors(graph.output[0])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(raw, TensorProto.FLOAT, [1, max_det, 6]))
    onnx.checker.check_model(model, full_check=True)
    path = (out_dir or detector.parent) / name
    onnx.save(model, path)
    return path

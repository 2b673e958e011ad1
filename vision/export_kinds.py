"""What kind of YOLO export a model is: its task, and whether it ends in NMS (end-to-end), read from Ultralytics'
metadata (``task``, ``end2end``, ``args``) and from the graph's outputs when the metadata is missing.

vision-quant quantizes detection exports, raw head (``B x (4+nc) x N``) or end-to-end (``B x max_det x 6``: x1, y1,
x2, y2, score, class). Segment, pose, OBB and classify exports are refused up front: their extra outputs (mask
prototypes, keypoints, angles, class vectors) are not what ``predict``/``eval``/``compare`` read, and a quantized
model we cannot score is not one we can vouch for.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import onnx

from quant_common.errors import QuantError
from vision.model import ModelInfo

SUPPORTED_TASKS = ("detect",)
# Ultralytics' task names and what their exports carry that detection's do not
_OTHER_TASKS = {"segment": "mask prototypes", "pose": "keypoints", "obb": "rotated boxes",
                "classify": "class scores, no boxes"}
# Ultralytics' end-to-end rows: x1, y1, x2, y2, score, class (+ an angle for OBB, which we refuse by task)
END_TO_END_ROW = (6, 7)


@dataclass(frozen=True)
class ExportKind:
    task: str  # "detect" or the Ultralytics task the model was exported for
    end_to_end: bool  # the graph ends in NMS: its output is final detections
    task_source: str  # "metadata" or "graph"

    def manifest(self) -> dict[str, object]:
        return {"task": self.task, "end_to_end": self.end_to_end, "task_source": self.task_source}


def _output_dims(model: onnx.ModelProto) -> list[list[int | None]]:
    return [[d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
             for d in o.type.tensor_type.shape.dim] for o in model.graph.output]


def _flag(text: str | None) -> bool | None:
    if text is None:
        return None
    return text.strip().lower() in ("true", "1")


def _args_nms(info: ModelInfo) -> bool | None:
    text = info.metadata.get("args")
    try:
        args = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None
    return bool(args.get("nms")) if isinstance(args, dict) and args.get("nms") is not None else None


def graph_task(model: onnx.ModelProto) -> str:
    """The task the outputs' shapes show: classify (one ``B x nc`` output), segment (a ``B x nm x H x W`` mask
    prototype output next to the detections), else detect (pose and OBB look like detect without metadata)."""
    dims = _output_dims(model)
    if len(dims) == 1 and len(dims[0]) == 2:
        return "classify"
    if len(dims) == 2 and sorted(len(d) for d in dims) == [3, 4]:
        return "segment"
    return "detect"


def is_end_to_end_shape(dims: list[int | None]) -> bool:
    """``B x N x 6|7`` with N not itself 6/7 (a raw head is ``B x (4+nc) x N``, N in the thousands)."""
    return len(dims) == 3 and dims[2] in END_TO_END_ROW and dims[1] not in END_TO_END_ROW


def export_kind(info: ModelInfo, model: onnx.ModelProto) -> ExportKind:
    task_meta = info.metadata.get("task")
    task, source = (task_meta.strip(), "metadata") if task_meta else (graph_task(model), "graph")
    # Ultralytics 8.4 writes end2end=False next to args nms=True for a detector exported with nms=True
    end2end = bool(_flag(info.metadata.get("end2end"))) or bool(_args_nms(info))
    dims = _output_dims(model)
    shaped = len(dims) == 1 and is_end_to_end_shape(dims[0])
    return ExportKind(task=task, end_to_end=end2end or shaped, task_source=source)


def check_supported(kind: ExportKind, label: str) -> None:
    """Refuse non-detection exports in one line, before any long work."""
    if kind.task in SUPPORTED_TASKS:
        return
    carried = _OTHER_TASKS.get(kind.task)
    what = f" ({carried})" if carried else ""
    raise QuantError(f"{label} is a YOLO '{kind.task}' export{what}; vision-quant quantizes detection models only",
                     "export a detection model (e.g. yolov8n.pt / yolo11n.pt with yolo export format=onnx)")


def _rank3_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes no head is found; the caller falls back
        return {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in vi.type.tensor_type.shape.dim)
        if len(dims) == 3:
            shapes[vi.name] = dims
    return shapes


def end_to_end_tail(model: onnx.ModelProto) -> tuple[str | None, list[str]]:
    """For an end-to-end export: the raw head tensor (``B x (4+nc) x N`` before the NMS) and the names of the
    nodes after it (decode, NMS, gathers, padding). Calibration stops at the raw head; the tail stays float in both
    Q/DQ layouts (boxes and scores are what NMS compares; a box transform quantized there moves every box).

    The raw head is the last tensor, in graph order, that leads to both the boxes and the scores of the NMS and is
    shaped ``B x C x N`` with
    ``C >= 5`` and ``N > C`` (YOLOv8/11: ``1 x 84 x 8400``); the Transpose after it is ``N x C``. Without static
    shapes, the tail is the NMS and what follows it. ``(None, [])`` for a model without NonMaxSuppression.
    """
    nodes = list(model.graph.node)
    nms = [n for n in nodes if n.op_type == "NonMaxSuppression"]
    if not nms:
        return None, []
    producer = {out: node for node in nodes for out in node.output}

    def ancestors_of(names: list[str]) -> set[str]:
        found: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in found:
                continue
            found.add(name)
            node = producer.get(name)
            if node is not None:
                stack.extend(node.input)
        return found

    # the raw head feeds both the boxes and the scores the NMS compares (a class-score tensor feeds only one)
    ancestors = ancestors_of([n.input[0] for n in nms]) & ancestors_of([n.input[1] for n in nms if len(n.input) > 1])
    shapes = _rank3_shapes(model)
    head = None
    for node in nodes:
        for out in node.output:
            dims = shapes.get(out)
            if (out in ancestors and dims and dims[1] is not None and dims[2] is not None and dims[1] >= 5
                    and dims[2] > dims[1]):
                head = out
    start = {head} if head is not None else {o for n in nms for o in n.output}
    tail = {id(n) for n in nms} if head is None else set()
    reached = set(start)
    for node in nodes:  # graph order is topological: one pass finds every descendant
        if id(node) in tail or any(name in reached for name in node.input):
            tail.add(id(node))
            reached.update(node.output)
    return head, [n.name for n in nodes if id(n) in tail and n.name]

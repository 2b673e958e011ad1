"""Builders for evaluation tests: "oracle" detectors whose output is known, a labelled set, a non-detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from vision.data.images import letterbox

NET = 640


def raw_output(boxes_xyxy_net: np.ndarray, classes: np.ndarray, num_classes: int, anchors: int = 64,
               score: float = 0.9, seed: int = 0) -> np.ndarray:
    """A ``1 x (4+nc) x anchors`` YOLOv8 head output holding these boxes (network pixels) with ``score``,
    the remaining anchors filled with random low-score boxes."""
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 4 + num_classes, anchors), np.float32)
    centres = rng.uniform(50, NET - 50, (anchors, 2))
    sizes = rng.uniform(5, 60, (anchors, 2))
    out[0, 0:2], out[0, 2:4] = centres.T, sizes.T
    out[0, 4:] = rng.uniform(0, 0.0005, (num_classes, anchors))  # below conf 0.001: never candidates
    for i, (box, cls) in enumerate(zip(boxes_xyxy_net, classes, strict=True)):
        out[0, 0, i], out[0, 1, i] = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        out[0, 2, i], out[0, 3, i] = box[2] - box[0], box[3] - box[1]
        out[0, 4 + int(cls), i] = score
    return out


def oracle_onnx(path: Path, output: np.ndarray, input_hw: tuple[int, int] = (NET, NET)) -> Path:
    """An ONNX model that returns ``output`` whatever the image (it still reads the input: 0 * mean(x) + output)."""
    const = numpy_helper.from_array(output.astype(np.float32), "prediction")
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["prediction", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "oracle", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *input_hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))], [const, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def classifier_onnx(path: Path) -> Path:
    """Not a detector: image -> 1 x 5 class scores."""
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    weight = numpy_helper.from_array(np.ones((3, 5), np.float32), "w")
    graph = helper.make_graph(nodes, "classifier",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


# Images 300 high, 400 wide (letterbox scales by 1.6 and pads 80 px above and below), three boxes each.
IMAGE_HW = (300, 400)
GT_BOXES = np.array([[20.0, 15.0, 100.0, 75.0], [150.0, 100.0, 180.0, 210.0], [250.0, 5.0, 315.0, 30.0]])
GT_CLASSES = np.array([0, 2, 1])
CATEGORY_IDS = [3, 7, 11]  # deliberately not 0..n-1: class i is the i-th category sorted by id


def labelled_set(root: Path, images: int = 2) -> tuple[Path, Path]:
    """``root/images/*.png`` and a COCO json whose every image holds GT_BOXES."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": cid, "name": f"class{cid}"} for cid in reversed(CATEGORY_IDS)]}
    for i in range(images):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8)).save(image_dir / name)
        coco["images"].append({"id": i + 1, "file_name": name, "height": IMAGE_HW[0], "width": IMAGE_HW[1]})
        for box, cls in zip(GT_BOXES, GT_CLASSES, strict=True):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[cls],
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0})
    annotations = root / "instances.json"
    annotations.write_text(json.dumps(coco))
    return image_dir, annotations


def to_network(boxes: np.ndarray, image_hw: tuple[int, int] = IMAGE_HW) -> np.ndarray:
    """Original-image boxes → letterboxed network pixels (the mapping the evaluator must undo)."""
    _, info = letterbox(np.zeros((*image_hw, 3), np.uint8), (NET, NET))
    out = boxes.astype(np.float64) * info.ratio
    out[:, [0, 2]] += info.pad_x
    out[:, [1, 3]] += info.pad_y
    return out

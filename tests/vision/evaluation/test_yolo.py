"""YOLOv8 post-processing: decode, thresholds, class-aware NMS, letterbox round trip."""

from __future__ import annotations

import numpy as np
import pytest

from quant_common.errors import QuantError
from tests.vision.eval_helpers import GT_BOXES, GT_CLASSES, IMAGE_HW, NET, raw_output, to_network
from vision.data.images import letterbox
from vision.evaluation.yolo import box_iou_one_to_many, detection_output, nms, postprocess, xywh_to_xyxy


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float) -> list[int]:
    """Plain-Python greedy NMS per class, merged by score: the definition the vectorized one must meet."""
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda k: (-scores[k], k)):
        if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_a_reference_greedy_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 300)
    scores = rng.random(300)
    classes = rng.integers(0, 4, 300)
    for threshold in (0.3, 0.5, 0.7):
        kept = nms(boxes, scores, threshold, classes=classes)
        assert kept.tolist() == _reference_nms(boxes, scores, classes, threshold)


def test_nms_is_class_aware_and_respects_max_det() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 3]  # class-agnostic: 1 and 2 overlap 0
    assert nms(boxes, scores, 0.5, classes=np.array([0, 0, 1, 0])).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.5, classes=np.array([0, 0, 1, 0]), max_det=2).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def test_iou_and_box_conversion() -> None:
    assert np.allclose(xywh_to_xyxy(np.array([[10.0, 20.0, 4.0, 6.0]])), [[8, 17, 12, 23]])
    ious = box_iou_one_to_many(np.array([0, 0, 10, 10.0]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30.0]]))
    assert np.allclose(ious, [1.0, 50 / 150, 0.0])


@pytest.mark.parametrize("num_classes,anchors", [(3, 64), (1, 30), (80, 8400)])
def test_letterbox_then_postprocess_returns_the_original_boxes(num_classes: int, anchors: int) -> None:
    classes = GT_CLASSES % num_classes
    output = raw_output(to_network(GT_BOXES), classes, num_classes, anchors=anchors)
    _, info = letterbox(np.zeros((*IMAGE_HW, 3), np.uint8), (NET, NET))
    assert info.ratio == pytest.approx(1.6) and info.pad_y == 80
    (dets,) = postprocess(output, [info], conf=0.25, iou=0.7)
    order = np.argsort(dets.boxes[:, 0])
    assert np.allclose(dets.boxes[order], GT_BOXES[np.argsort(GT_BOXES[:, 0])], atol=1e-3)
    assert sorted(dets.classes.tolist()) == sorted(classes.tolist())
    assert np.allclose(dets.scores, 0.9)


def test_thresholds_multi_label_and_batches() -> None:
    output = raw_output(np.array([[100.0, 100.0, 200.0, 200.0]]), np.array([0]), 3)
    output[0, 4 + 2, 0] = 0.4  # the same box also scores 0.4 for class 2
    (single,) = postprocess(output, conf=0.25)
    assert single.classes.tolist() == [0]
    (multi,) = postprocess(output, conf=0.25, multi_label=True)
    assert sorted(multi.classes.tolist()) == [0, 2]
    (none,) = postprocess(output, conf=0.95)
    assert len(none) == 0
    batch = np.concatenate([output, np.zeros_like(output)])
    first, second = postprocess(batch, [None, None], conf=0.25)
    assert len(first) == 1 and len(second) == 0


def test_overlapping_duplicates_are_suppressed_per_class() -> None:
    boxes = np.array([[100, 100, 200, 200], [102, 101, 203, 199], [100, 100, 200, 200.0]])
    output = raw_output(boxes, np.array([1, 1, 0]), 2)
    output[0, 4 + 1, 1] = 0.8  # lower-scoring duplicate of box 0, same class
    (dets,) = postprocess(output, conf=0.25, iou=0.7)
    assert sorted(dets.classes.tolist()) == [0, 1]


def test_end_to_end_exports_are_read_without_nms() -> None:
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, 0] = [10, 20, 30, 40, 0.9, 2]
    rows[0, 1] = [50, 60, 70, 80, 0.1, 1]
    (dets,) = postprocess(rows, conf=0.25)
    assert dets.boxes.tolist() == [[10, 20, 30, 40]] and dets.classes.tolist() == [2]


def test_non_detection_outputs_are_refused_in_one_line() -> None:
    with pytest.raises(QuantError, match="not a YOLOv8 detection output"):
        detection_output({"logits": np.zeros((1, 1000), np.float32)})
    with pytest.raises(QuantError, match="4 box values"):
        postprocess(np.zeros((1, 4, 10), np.float32))
    with pytest.raises(QuantError, match="expected batch"):
        postprocess(np.zeros((10, 8), np.float32))

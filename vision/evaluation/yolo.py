"""YOLOv8 post-processing: decode ``B x (4+nc) x N`` outputs, confidence threshold, class-aware NMS, un-letterbox.

Works for any class count and anchor count (read from the output shape). Also accepts Ultralytics'
end-to-end exports (``nms=True``: ``B x max_det x 6`` rows of x1, y1, x2, y2, score, class), which need no NMS.
Defaults follow Ultralytics: validation uses ``conf=0.001, iou=0.7, max_det=300`` and multi-label candidates
(a box may score for several classes); prediction uses ``conf=0.25`` and the best class only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quant_common.errors import QuantError
from vision.data.images import LetterboxInfo

MAX_NMS_CANDIDATES = 30000  # as Ultralytics: keep the 30k best candidates before NMS


@dataclass(frozen=True)
class Detections:
    """One image's detections: ``boxes`` xyxy (float64), ``scores`` and integer ``classes``, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes, dtype=np.float64)
    half_w, half_h = boxes[..., 2] / 2, boxes[..., 3] / 2
    out[..., 0], out[..., 1] = boxes[..., 0] - half_w, boxes[..., 1] - half_h
    out[..., 2], out[..., 3] = boxes[..., 0] + half_w, boxes[..., 1] + half_h
    return out


def box_iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against ``[K, 4]`` xyxy boxes."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None,
        max_det: int | None = None) -> np.ndarray:
    """Greedy NMS (torchvision semantics: drop boxes with IoU > threshold against a better kept box).

    With ``classes``, boxes of different classes never suppress each other (each class is shifted to its own
    coordinate range, the usual offset trick). Returns kept indices, best score first, at most ``max_det``.
    Vectorized one-against-rest per kept box: with ``max_det`` 300 that is at most 300 numpy passes, a few ms
    per image here; torchvision (whose C++ NMS we would rather reuse) is not installable next to CPU torch.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if classes is not None:
        span = float(np.abs(boxes).max()) + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * 2 * span)[:, None]
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    limit = max_det if max_det is not None else boxes.shape[0]
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou_one_to_many(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def detection_output(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Pick the YOLO detection tensor among a model's outputs, or say clearly that there is none."""
    candidates = [value for value in outputs.values() if np.ndim(value) == 3 and value.shape[1] >= 5]
    if len(candidates) != 1:
        shapes = {name: tuple(np.shape(value)) for name, value in outputs.items()}
        raise QuantError(f"the model's outputs {shapes} are not a YOLOv8 detection output (expected one "
                         "tensor of shape batch x (4+classes) x anchors)",
                         "pass a YOLOv8 detection model exported to ONNX (e.g. Ultralytics export format=onnx)")
    return candidates[0]


def is_end_to_end(output: np.ndarray) -> bool:
    """Ultralytics ``nms=True`` exports give ``B x max_det x 6`` (x1, y1, x2, y2, score, class; a 7th column, where
    present, is ignored); raw heads give ``B x (4+nc) x N``."""
    return output.shape[2] in (6, 7) and output.shape[1] not in (6, 7)


def decode_one(prediction: np.ndarray, conf: float, iou: float, max_det: int, multi_label: bool) -> Detections:
    """One image's raw ``(4+nc) x N`` head output → NMS-ed detections in network-input pixels."""
    channels = prediction.shape[0]
    num_classes = channels - 4
    if num_classes < 1:
        raise QuantError(f"detection output has {channels} channels; YOLOv8 needs 4 box values plus at least "
                         "one class score", "pass a YOLOv8 detection model")
    scores_all = prediction[4:]  # nc x N
    candidates = np.nonzero(scores_all.max(axis=0) > conf)[0]
    if candidates.size == 0:
        return Detections.empty()
    boxes = xywh_to_xyxy(prediction[:4, candidates].T)
    class_scores = scores_all[:, candidates]
    if multi_label and num_classes > 1:
        cls_index, box_index = np.nonzero(class_scores > conf)
        boxes, scores, classes = boxes[box_index], class_scores[cls_index, box_index], cls_index
    else:
        classes = class_scores.argmax(axis=0)
        scores = class_scores[classes, np.arange(candidates.size)]
        keep = scores > conf
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    if scores.size > MAX_NMS_CANDIDATES:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep = nms(boxes, scores, iou, classes=classes, max_det=max_det)
    return Detections(boxes[keep], scores[keep].astype(np.float64), classes[keep].astype(np.int64))


def postprocess(output: np.ndarray, letterboxes: Sequence[LetterboxInfo | None] | None = None, *,
                conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                multi_label: bool = False) -> list[Detections]:
    """A batch's detection output → per-image detections in original image coordinates.

    ``letterboxes[i]`` maps image i back (``None`` keeps network-input pixels).
    """
    output = np.asarray(output)
    if output.ndim != 3:
        raise QuantError(f"detection output has shape {tuple(output.shape)}, expected batch x (4+classes) x anchors",
                         "pass a YOLOv8 detection model")
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
        raise QuantError(f"confidence {conf} and IoU {iou} must lie in [0, 1]", "pass values between 0 and 1")
    if letterboxes is not None and len(letterboxes) != output.shape[0]:
        raise QuantError(f"{len(letterboxes)} letterbox records for a batch of {output.shape[0]}",
                         "pass one LetterboxInfo per image")
    results = []
    for index, prediction in enumerate(output.astype(np.float32, copy=False)):
        if is_end_to_end(output):
            keep = prediction[:, 4] > conf
            rows = prediction[keep][:max_det]
            detections = Detections(rows[:, :4].astype(np.float64), rows[:, 4].astype(np.float64),
                                    rows[:, 5].astype(np.int64))
        else:
            detections = decode_one(prediction, conf, iou, max_det, multi_label)
        info = letterboxes[index] if letterboxes is not None else None
        if info is not None and len(detections):
            detections = Detections(info.to_original(detections.boxes), detections.scores, detections.classes)
        results.append(detections)
    return results

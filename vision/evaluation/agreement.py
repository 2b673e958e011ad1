"""FP32 vs INT8 output agreement over any two ``Runner``s (Polygraphy's comparator, reduced to what build reports)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from vision.backends.base import Runner

SCORE_THRESHOLD = 0.25  # Ultralytics' default confidence for predictions
IOU_MATCH = 0.5


@dataclass
class Agreement:
    images: int
    cosine: float  # cosine similarity of all raw outputs, worst over images
    max_abs_diff: float
    mean_abs_diff: float
    # YOLOv8 head ([N, 4 + classes, anchors]): of the anchors the FP32 model is confident about, the share where
    # INT8 predicts the same class with a box of IoU >= 0.5. None for other output layouts.
    detection_match: float | None = None
    confident_anchors: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _is_yolov8_head(array: np.ndarray) -> bool:
    return array.ndim == 3 and 5 <= array.shape[1] < array.shape[2]


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(axis=1)
    union = a[:, 2:].prod(axis=1) + b[:, 2:].prod(axis=1) - inter
    return inter / np.maximum(union, 1e-9)


def _detection_counts(ref: np.ndarray, test: np.ndarray) -> tuple[int, int]:
    matched = total = 0
    for r, t in zip(ref, test, strict=True):  # per image: [4 + classes, anchors]
        scores = r[4:]
        confident = scores.max(axis=0) >= SCORE_THRESHOLD
        if not confident.any():
            continue
        same_class = scores[:, confident].argmax(axis=0) == t[4:, confident].argmax(axis=0)
        iou = _iou_xywh(r[:4, confident].T, t[:4, confident].T)
        matched += int((same_class & (iou >= IOU_MATCH)).sum())
        total += int(confident.sum())
    return matched, total


def compare(reference: Runner, candidate: Runner, batches: Iterable[Mapping[str, np.ndarray]]) -> Agreement:
    """Run both runners on the same feeds and summarize how closely ``candidate`` follows ``reference``."""
    cosines, max_diff, abs_sum, count, images, matched, confident = [], 0.0, 0.0, 0, 0, 0, 0
    with reference, candidate:
        for feeds in batches:
            ref_out, test_out = reference.infer(feeds), candidate.infer(feeds)
            images += len(next(iter(feeds.values())))
            for name, ref in ref_out.items():
                ref64, test64 = ref.astype(np.float64), test_out[name].astype(np.float64)
                for r, t in zip(ref64.reshape(len(ref64), -1), test64.reshape(len(test64), -1), strict=True):
                    denom = np.linalg.norm(r) * np.linalg.norm(t)
                    cosines.append(float(r @ t / denom) if denom else float(np.array_equal(r, t)))
                diff = np.abs(ref64 - test64)
                max_diff = max(max_diff, float(diff.max(initial=0.0)))
                abs_sum += float(diff.sum())
                count += diff.size
                if _is_yolov8_head(ref):
                    m, c = _detection_counts(ref64, test64)
                    matched, confident = matched + m, confident + c
    return Agreement(images=images, cosine=round(min(cosines, default=1.0), 6), max_abs_diff=round(max_diff, 6),
                     mean_abs_diff=round(abs_sum / max(count, 1), 6),
                     detection_match=round(matched / confident, 4) if confident else None,
                     confident_anchors=confident)

"""mAP through the server: the labelled images sent to the served detector, scored exactly as ``vision-quant eval``
scores a runner (``vision.evaluation.evaluate.select_images`` / ``score_detections``, pycocotools)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from vision.evaluation.evaluate import EvalResult, score_detections, select_images
from vision.serving.client import DetectClient, read_image_bytes


def evaluate_served(client: DetectClient, images_dir: str | os.PathLike[str], annotations: str | os.PathLike[str], *,
                    class_map: str | os.PathLike[str] | None = None, conf: float = 0.001, iou: float = 0.7,
                    max_det: int = 300, max_images: int | None = None,
                    progress: Callable[[Any, str, int], Any] | None = None) -> EvalResult:
    """mAP50-95 / mAP50 / per-class AP of the served detector, with eval's settings (multi-label candidates)."""
    coco, image_ids, paths, _ = select_images(images_dir, annotations, max_images)
    iterate = progress or (lambda items, _d, _t: items)
    start = time.perf_counter()
    detections = [client.detect(read_image_bytes(path), conf=conf, iou=iou, max_det=max_det, multi_label=True)
                  for path in iterate(paths, "detecting (Triton)", len(paths))]
    num_classes = client.num_classes() or len(coco.dataset["categories"])
    return score_detections(coco, image_ids, detections, num_classes, class_map=class_map, conf=conf, iou=iou,
                            max_det=max_det, seconds=time.perf_counter() - start,
                            backend=f"triton:{client.model}", device=f"{client.protocol}://{client.url}")

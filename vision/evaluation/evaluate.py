"""COCO mAP of a detector (any ``Runner``: FP32 ONNX, Q/DQ ONNX, TensorRT engine) on a labelled image set.

Pre-processing is Ultralytics' letterbox and post-processing follows its validator (multi-label candidates,
class-aware NMS, ``conf=0.001, iou=0.7, max_det=300``), so numbers are comparable with ``yolo val``; the metric
itself is pycocotools' COCOeval with ``maxDets`` raised to ``max_det`` to match.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from quant_common.errors import QuantError
from vision.backends.base import Runner
from vision.data.images import letterbox, load_image, to_input_tensor
from vision.evaluation.map_bootstrap import ImageMatches
from vision.evaluation.yolo import Detections, detection_output, postprocess


@dataclass
class ClassResult:
    class_index: int
    category_id: int
    name: str
    instances: int
    map50_95: float
    map50: float


@dataclass
class EvalResult:
    map50_95: float
    map50: float
    per_class: list[ClassResult]
    images: int
    instances: int
    detections: int
    conf: float
    iou: float
    max_det: int
    seconds: float
    backend: str = ""
    device: str = ""
    artifact: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    map50_95_ci95: list[float] | None = None  # 95 % intervals over images, where a caller bootstrapped them
    map50_ci95: list[float] | None = None
    # the per-image COCO matching, for intervals and paired differences (vision.evaluation.map_bootstrap)
    matches: ImageMatches | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "matches"}
        out["per_class"] = [asdict(c) for c in self.per_class]
        return out


@contextlib.contextmanager
def _quiet() -> Any:
    """pycocotools prints progress to stdout; the library never prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_annotations(path: str | os.PathLike[str]) -> Any:
    """A pycocotools ``COCO`` object for a detection annotation file, with problems as one line."""
    from pycocotools.coco import COCO

    source = Path(path)
    if not source.is_file():
        raise QuantError(f"annotation file not found: {source}", "pass a COCO-format instances json")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QuantError(f"cannot read annotations {source}: {exc}", "pass a valid COCO-format json") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise QuantError(f"{source} is not a COCO detection file (needs 'images' and 'categories' lists)",
                         "pass a COCO-format instances json")
    data.setdefault("annotations", [])
    try:
        for ann in data["annotations"]:
            if len(ann["bbox"]) != 4:
                raise ValueError(f"annotation {ann.get('id')} has bbox {ann['bbox']}")
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        coco = COCO()
        coco.dataset = data
        with _quiet():
            coco.createIndex()
    except (KeyError, TypeError, ValueError) as exc:
        raise QuantError(f"{source} is not a valid COCO detection file ({exc.__class__.__name__}: {exc})",
                         "every annotation needs image_id, category_id and bbox [x, y, w, h]") from exc
    return coco


def class_to_category(coco: Any, num_classes: int, class_map: str | os.PathLike[str] | None = None) -> list[int]:
    """Category id for each model class: the i-th category sorted by id, or as ``class_map`` says.

    A class map is JSON or YAML: a list (index = model class) or a mapping ``class -> category``; categories are
    given by id or by name.
    """
    categories = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    by_name = {c["name"]: c["id"] for c in categories}
    ids = {c["id"] for c in categories}
    if class_map is None:
        if len(categories) != num_classes:
            raise QuantError(f"the model predicts {num_classes} classes but the annotations have "
                             f"{len(categories)} categories", "pass --class-map to say which class is which category")
        return [c["id"] for c in categories]
    path = Path(class_map)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise QuantError(f"cannot read class map {path}: {exc}", "pass a JSON/YAML list or mapping") from exc
    if isinstance(raw, dict) and "names" in raw and isinstance(raw["names"], (list, dict)):
        raw = raw["names"]  # an Ultralytics data.yaml works as a class map (class -> category name)
    items = list(enumerate(raw)) if isinstance(raw, list) else list(raw.items()) if isinstance(raw, dict) else None
    if items is None:
        raise QuantError(f"class map {path} is neither a list nor a mapping", "pass a JSON/YAML list or mapping")
    mapping: dict[int, int] = {}
    for key, value in items:
        category = by_name.get(value) if isinstance(value, str) else value
        if isinstance(key, str) and key.strip().isdigit():  # JSON object keys are strings
            key = int(key)
        if not isinstance(key, int) or category not in ids or not 0 <= key < num_classes:
            raise QuantError(f"class map {path}: entry {key!r} -> {value!r} names no model class (0..{num_classes - 1}) "
                             "or no category of the annotation file", "fix the class map")
        mapping[key] = int(category)  # type: ignore[arg-type]  # checked to be a category id above
    return [mapping.get(i, -1) for i in range(num_classes)]


def _check_images(coco: Any, images_dir: Path, image_ids: list[int]) -> list[Path]:
    missing = [coco.imgs[i]["file_name"] for i in image_ids if not (images_dir / coco.imgs[i]["file_name"]).is_file()]
    if missing:
        raise QuantError(f"{len(missing)} of {len(image_ids)} images named in the annotations are not under "
                         f"{images_dir} (first: {missing[0]})",
                         "pass the image directory that matches the annotation file (--data)")
    return [images_dir / coco.imgs[i]["file_name"] for i in image_ids]


def _input_hw(runner: Runner, imgsz: int) -> tuple[str, tuple[int, int]]:
    specs = runner.input_specs()
    if len(specs) != 1 or len(specs[0].shape) != 4:
        shapes = [(s.name, s.shape) for s in specs]
        raise QuantError(f"the model's inputs {shapes} are not one NCHW image input",
                         "pass a YOLOv8 detection model with a single image input")
    _, _, h, w = specs[0].shape
    return specs[0].name, (h if isinstance(h, int) and h > 0 else imgsz, w if isinstance(w, int) and w > 0 else imgsz)


def predict_images(runner: Runner, paths: list[Path], *, conf: float, iou: float, max_det: int,
                   multi_label: bool, imgsz: int = 640, expected_hw: list[tuple[int, int] | None] | None = None,
                   progress: Callable[[Any, str, int], Any] | None = None) -> list[tuple[np.ndarray, Detections]]:
    """Run the detector on each image; returns (original RGB image shape, detections in its pixels).

    ``expected_hw[i]`` (from an annotation file) is checked against image i before it is run.
    """
    name, hw = _input_hw(runner, imgsz)
    iterate = progress or (lambda items, _d, _t: items)
    results = []
    for index, path in enumerate(iterate(paths, "detecting", len(paths))):
        image = load_image(path)
        expected = expected_hw[index] if expected_hw is not None else None
        if expected is not None and expected != image.shape[:2]:
            raise QuantError(f"image {path.name} is {image.shape[1]}x{image.shape[0]} but the annotations say "
                             f"{expected[1]}x{expected[0]}", "pass the annotation file made for these images")
        boxed, info = letterbox(image, hw)
        output = detection_output(runner.infer({name: to_input_tensor([boxed])}))
        detections = postprocess(output, [info], conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)[0]
        results.append((np.asarray(image.shape), detections))
    return results


def coco_map(coco: Any, detections: list[dict[str, Any]], image_ids: list[int], max_det: int) -> tuple[Any, float, float]:
    """pycocotools bbox evaluation; returns (COCOeval, mAP50-95, mAP50)."""
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return None, 0.0, 0.0
    with _quiet():
        result = coco.loadRes(detections)
        evaluator = COCOeval(coco, result, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.maxDets = [1, 10, max_det]
        evaluator.evaluate()
        evaluator.accumulate()
    # COCOeval.summarize() reads mAP at maxDets=100 only (-1 when maxDets is raised), so average its
    # precision table [IoU, recall, class, area, maxDets] ourselves, exactly as summarize() does.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    return evaluator, _mean_valid(precision), _mean_valid(precision[0])


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def _per_class(evaluator: Any, coco: Any, categories: list[int], image_ids: list[int]) -> list[ClassResult]:
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    counts: dict[int, int] = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_ids)):
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    results = []
    for index, category in enumerate(categories):
        if category < 0:
            continue
        ap = ap50 = 0.0
        if evaluator is not None:
            k = evaluator.params.catIds.index(category)
            precision = evaluator.eval["precision"][:, :, k, 0, -1]  # IoU x recall, area all, max dets
            ap, ap50 = _mean_valid(precision), _mean_valid(precision[0])
        results.append(ClassResult(index, category, names.get(category, str(category)), counts.get(category, 0),
                                   ap, ap50))
    return results


def evaluate(runner: Runner, images_dir: str | os.PathLike[str], annotations: str | os.PathLike[str], *,
             class_map: str | os.PathLike[str] | None = None, conf: float = 0.001, iou: float = 0.7,
             max_det: int = 300, max_images: int | None = None, imgsz: int = 640,
             progress: Callable[[Any, str, int], Any] | None = None) -> EvalResult:
    """mAP50-95, mAP50 and per-class AP of ``runner``'s detector on a COCO-annotated image directory."""
    if max_det < 1:
        raise QuantError(f"max_det must be at least 1, got {max_det}", "pass a positive --max-det")
    coco, image_ids, paths, expected = select_images(images_dir, annotations, max_images)
    start = time.perf_counter()
    runner.activate()
    predictions = predict_images(runner, paths, conf=conf, iou=iou, max_det=max_det, multi_label=True,
                                 imgsz=imgsz, expected_hw=expected, progress=progress)
    num_classes = _num_classes(runner) or len(coco.dataset["categories"])
    return score_detections(coco, image_ids, [d for _, d in predictions], num_classes, class_map=class_map,
                            conf=conf, iou=iou, max_det=max_det, seconds=time.perf_counter() - start,
                            backend=runner.backend, device=runner.device)


def select_images(images_dir: str | os.PathLike[str], annotations: str | os.PathLike[str],
                  max_images: int | None = None) -> tuple[Any, list[int], list[Path], list[tuple[int, int] | None]]:
    """(COCO, image ids, image paths, annotated (h, w) per image) of the first ``max_images`` annotated images."""
    coco = load_annotations(annotations)
    image_ids = sorted(coco.imgs)
    if max_images is not None:
        if max_images < 1:
            raise QuantError(f"--max-images must be at least 1, got {max_images}", "pass a positive number")
        image_ids = image_ids[:max_images]
    if not image_ids:
        raise QuantError(f"the annotation file {annotations} lists no images", "pass a non-empty COCO file")
    paths = _check_images(coco, Path(images_dir), image_ids)
    expected = [(int(coco.imgs[i]["height"]), int(coco.imgs[i]["width"])) if "height" in coco.imgs[i]
                and "width" in coco.imgs[i] else None for i in image_ids]
    return coco, image_ids, paths, expected


def score_detections(coco: Any, image_ids: list[int], detections: list[Detections], num_classes: int, *,
                     class_map: str | os.PathLike[str] | None = None, conf: float, iou: float, max_det: int,
                     seconds: float, backend: str, device: str) -> EvalResult:
    """pycocotools mAP of per-image detections (from a runner here, or from a served model)."""
    categories = class_to_category(coco, num_classes, class_map)
    records = []
    for image_id, found in zip(image_ids, detections, strict=True):
        for box, score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
            category = categories[int(cls)] if int(cls) < len(categories) else -1
            if category >= 0:
                records.append({"image_id": image_id, "category_id": category, "score": float(score),
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                         float(box[3] - box[1])]})
    evaluator, map50_95, map50 = coco_map(coco, records, image_ids, max_det)
    matches = ImageMatches.from_evaluator(evaluator, image_ids) if evaluator is not None else \
        ImageMatches.without_detections(coco, image_ids)
    return EvalResult(
        map50_95=map50_95, map50=map50, per_class=_per_class(evaluator, coco, categories, image_ids),
        images=len(image_ids), instances=len(coco.getAnnIds(imgIds=image_ids)), detections=len(records),
        conf=conf, iou=iou, max_det=max_det, seconds=round(seconds, 3), backend=backend, device=device,
        matches=matches)


def _num_classes(runner: Runner) -> int | None:
    """Class count from the detection output's shape; None for end-to-end exports (rows carry class indices)."""
    for spec in runner.output_specs():
        if len(spec.shape) == 3 and isinstance(spec.shape[1], int) and spec.shape[1] >= 5:
            if isinstance(spec.shape[2], int) and spec.shape[2] == 6 and spec.shape[1] != 6:
                return None
            return spec.shape[1] - 4
    return None

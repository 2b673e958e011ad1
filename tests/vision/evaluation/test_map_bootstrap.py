"""mAP on a resampled image multiset equals pycocotools' own accumulate() on that multiset; the paired interval of
Δ mAP brackets the measured Δ and shrinks with more images."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quant_common.errors import QuantError
from quant_common.uncertainty import resample_counts
from vision.evaluation.evaluate import _quiet, coco_map, load_annotations
from vision.evaluation.map_bootstrap import ImageMatches, map_estimate, paired_map_delta

CATEGORIES = [1, 2, 5]


def scene(tmp_path: Path, images: int, seed: int = 0) -> tuple[Any, list[int], list[dict[str, Any]]]:
    """A COCO ground truth (some crowd boxes, an image without objects) and two models' detections on it: a good
    one and a noisier one. Detections are jittered truths (IoUs from ~0.4 to 1), duplicates and random boxes; scores
    are rounded so that detections of different images tie, plus 1e-6 per detection of an image so that those of
    one image do not (a real detector's float scores practically never tie within an image and category)."""
    rng = np.random.default_rng(seed)
    gt: dict[str, Any] = {"images": [], "annotations": [],
                          "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(0 if image_id == 2 else int(rng.integers(1, 6))):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(8, 140), rng.uniform(8, 130)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": int(rng.choice(CATEGORIES)), "bbox": [x, y, w, h],
                                      "iscrowd": int(rng.random() < 0.05)})
    path = tmp_path / f"gt{images}_{seed}.json"
    path.write_text(json.dumps(gt))
    coco = load_annotations(path)
    models = []
    for noise in (0.05, 0.15):
        records: list[dict[str, Any]] = []
        for ann in gt["annotations"]:
            for _ in range(int(rng.integers(0, 3))):  # missed, found, found twice
                x, y, w, h = ann["bbox"]
                jitter = rng.normal(0, noise, 4) * [w, h, w, h]
                category = ann["category_id"] if rng.random() > noise else int(rng.choice(CATEGORIES))
                records.append({"image_id": ann["image_id"], "category_id": category,
                                "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]) + 1, abs(h + jitter[3]) + 1],
                                "score": float(np.round(rng.uniform(0.05, 1.0), 2))})  # rounded: score ties
        for image_id in range(1, images + 1):
            for _ in range(int(rng.integers(0, 4))):
                records.append({"image_id": image_id, "category_id": int(rng.choice(CATEGORIES)),
                                "bbox": [rng.uniform(0, 500), rng.uniform(0, 350), rng.uniform(5, 90),
                                         rng.uniform(5, 90)], "score": float(np.round(rng.uniform(0.0, 0.6), 2))})
        per_image: dict[int, int] = {}
        for record in records:
            per_image[record["image_id"]] = per_image.get(record["image_id"], 0) + 1
            record["score"] += 1e-6 * per_image[record["image_id"]]
        models.append(records)
    return coco, sorted(coco.imgs), models


def pycocotools_on_multiset(evaluator: Any, positions: np.ndarray) -> tuple[float, float]:
    """pycocotools' accumulate() over the images at ``positions`` (sorted, repeats allowed), from its own evalImgs."""
    p = copy.deepcopy(evaluator.params)
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    resampled = copy.copy(evaluator)
    resampled.evalImgs = [evaluator.evalImgs[k * n_area * n_img + a * n_img + int(i)]
                          for k in range(len(p.catIds)) for a in range(n_area) for i in positions]
    ids = [p.imgIds[int(i)] for i in positions]
    resampled._paramsEval = copy.deepcopy(evaluator._paramsEval)
    resampled._paramsEval.imgIds = ids
    p.imgIds = ids
    resampled.params = p
    with _quiet():
        resampled.accumulate(p)
    precision = resampled.eval["precision"][:, :, :, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()), float(precision[0][precision[0] > -1].mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_resampled_map_equals_pycocotools_on_the_multiset(tmp_path: Path, seed: int) -> None:
    coco, ids, models = scene(tmp_path, 30, seed)
    for records in models:
        evaluator, map50_95, map50 = coco_map(coco, records, ids, max_det=300)
        matches = ImageMatches.from_evaluator(evaluator, ids)
        assert matches.map(np.ones(len(ids)))[0] == pytest.approx([map50_95, map50], abs=1e-12)
        counts = resample_counts(len(ids), 6, seed=seed)
        ours = matches.map(counts)
        for row, weights in enumerate(counts):
            positions = np.repeat(np.arange(len(ids)), weights)
            assert ours[row] == pytest.approx(pycocotools_on_multiset(evaluator, positions), abs=1e-12)


def test_paired_delta_brackets_the_measured_delta_and_shrinks_with_more_images(tmp_path: Path) -> None:
    widths = []
    for images in (20, 180):
        coco, ids, (good, noisy) = scene(tmp_path, images, seed=3)
        (ev_good, map_good, _), (ev_noisy, map_noisy, _) = (coco_map(coco, r, ids, 300) for r in (good, noisy))
        delta = paired_map_delta(ImageMatches.from_evaluator(ev_good, ids), ImageMatches.from_evaluator(ev_noisy, ids),
                                 resamples=200)
        assert delta.value == pytest.approx(100 * (map_noisy - map_good))
        assert delta.ci95[0] < delta.value < delta.ci95[1]
        widths.append(delta.width)
    assert widths[1] < 0.6 * widths[0]  # 9x the images: ~1/3 the width in theory


def test_no_detections_scores_zero_with_a_zero_interval(tmp_path: Path) -> None:
    coco, ids, _ = scene(tmp_path, 10)
    nothing = ImageMatches.without_detections(coco, ids)
    est = map_estimate(nothing, resamples=50)
    assert est.value == 0.0 and est.ci95 == (0.0, 0.0)


def test_models_on_different_images_are_refused(tmp_path: Path) -> None:
    coco, ids, (good, _) = scene(tmp_path, 12)
    evaluator, _, _ = coco_map(coco, good, ids, 300)
    matches = ImageMatches.from_evaluator(evaluator, ids)
    other = ImageMatches.without_detections(coco, ids[:6])
    with pytest.raises(QuantError, match="different images"):
        paired_map_delta(matches, other)

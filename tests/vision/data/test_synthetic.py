"""The seeded synthetic detection set: determinism, label consistency, calibration images, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quant_common.errors import QuantError
from vision.data.synthetic import (
    CLASSES,
    generate_calibration_images,
    generate_dataset,
    image_rng,
    render_scene,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", 3, seed=5, imgsz=128, workers=1)
    generate_dataset(tmp_path / "b", 3, seed=5, imgsz=128, workers=2)
    generate_dataset(tmp_path / "c", 3, seed=6, imgsz=128, workers=1)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert first == tmp_path / "a" / "annotations" / "instances_val.json"


def test_coco_and_yolo_labels_agree_and_stay_inside_the_image(tmp_path: Path) -> None:
    coco = json.loads(generate_dataset(tmp_path, 4, seed=1, imgsz=160, split="train", workers=1).read_text())
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(CLASSES)
    assert len(coco["images"]) == 4 and len(coco["annotations"]) >= 4
    for image in coco["images"]:
        path = tmp_path / "images" / "train" / image["file_name"]
        assert Image.open(path).size == (image["width"], image["height"]) == (160, 160)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        label_file = tmp_path / "labels" / "train" / (path.stem + ".txt")
        rows = np.loadtxt(label_file, ndmin=2) if label_file.read_text().strip() else np.zeros((0, 5))
        assert len(rows) == len(anns)
        for row, ann in zip(rows, anns, strict=True):
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 160 and y + h <= 160 and w >= 4 and h >= 4
            assert row[0] == ann["category_id"] - 1
            assert np.allclose(row[1:], [(x + w / 2) / 160, (y + h / 2) / 160, w / 160, h / 160], atol=1e-5)
            assert 0 < ann["area"] <= w * h


def test_scenes_hold_several_classes_and_objects_change_the_pixels() -> None:
    image, annotations = render_scene(image_rng(0, "val", 7), 256, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert len(annotations) >= 2
    background_only, _ = render_scene(image_rng(0, "val", 8), 256, 256)
    assert not np.array_equal(image, background_only)


def test_calibration_images_are_deterministic_and_varied_in_size(tmp_path: Path) -> None:
    out = generate_calibration_images(tmp_path / "a", 3, seed=2, imgsz=128, workers=1)
    generate_calibration_images(tmp_path / "b", 3, seed=2, imgsz=128, workers=1)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    sizes = {Image.open(p).size for p in out.glob("*.jpg")}
    assert len(list(out.glob("*.jpg"))) == 3 and len(sizes) > 1


@pytest.mark.parametrize("kwargs,message", [({"n_images": 0}, "at least 1"), ({"imgsz": 32}, "too small"),
                                            ({"seed": -1}, "non-negative")])
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n_images": 1, "seed": 0, "imgsz": 128} | kwargs
    with pytest.raises(QuantError, match=message):
        generate_dataset(tmp_path, **args)
    assert not (tmp_path / "annotations").exists()

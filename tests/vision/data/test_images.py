"""Calibration images: discovery, seeded subsets, decoding quirks, letterbox, batching, skipped files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from quant_common.errors import QuantError
from vision.data.images import CalibrationSet, letterbox, list_images, load_image, select_subset


def _write(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for i in range(5):
        _write(root / ("nested" if i % 2 else "") / f"im{i}.png", rng.integers(0, 255, (40 + i, 60, 3), np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_recursive_list_file_and_single_file(image_dir, tmp_path):
    found = list_images(image_dir)
    assert len(found) == 5 and found == sorted(found)
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimgs/im0.png\n\n" + str(found[1]) + "\n")
    assert list_images(listing) == [tmp_path / "imgs/im0.png", found[1]]
    assert list_images(found[2]) == [found[2]]
    listing.write_text("imgs/im0.png\nimgs/gone.png\n")
    calib = CalibrationSet.from_source(listing, "images", (32, 32), batch=1)
    assert calib.paths == [tmp_path / "imgs/im0.png"] and list(calib.skipped) == [str(tmp_path / "imgs/gone.png")]
    with pytest.raises(QuantError, match="not found"):
        list_images(tmp_path / "missing")


def test_seeded_subset_is_reproducible_and_sorted(tmp_path):
    paths = [tmp_path / f"{i:03d}.jpg" for i in range(100)]
    a, b, c = select_subset(paths, 10, 1), select_subset(paths, 10, 1), select_subset(paths, 10, 2)
    assert a == b and a != c and a == sorted(a) and len(set(a)) == 10
    assert select_subset(paths, None, 0) == paths and select_subset(paths, 500, 0) == paths


def test_load_image_converts_gray_rgba_16bit_and_applies_exif(tmp_path):
    gray = _write(tmp_path / "g.png", np.full((8, 9), 200, np.uint8))
    rgba = _write(tmp_path / "a.png", np.dstack([np.full((8, 9, 3), 10, np.uint8), np.zeros((8, 9), np.uint8)]))
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((8, 9), 65535, np.uint16)).save(deep)
    for path, value in ((gray, 200), (rgba, 10), (deep, 255)):
        img = load_image(path)
        assert img.shape == (8, 9, 3) and img.dtype == np.uint8 and int(img[0, 0, 0]) == value
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated = tmp_path / "r.jpg"
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(rotated, exif=exif)
    assert load_image(rotated).shape == (30, 10, 3)


def test_letterbox_keeps_ratio_and_pads_114():
    img = np.zeros((100, 200, 3), np.uint8)
    boxed, info = letterbox(img, (64, 64))
    assert boxed.shape == (64, 64, 3) and info.ratio == pytest.approx(0.32)
    assert (boxed[:16] == 114).all() and (boxed[-16:] == 114).all() and (boxed[20:44] == 0).all()


def test_batches_are_deterministic_and_skip_unreadable_files(image_dir):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    calib = CalibrationSet.from_source(image_dir, "images", (32, 32), batch=2)
    first = list(calib.iter_batches(progress=False))
    second = list(calib)
    assert [b["images"].shape[0] for b in first] == [2, 2, 1]
    assert all(b["images"].shape[1:] == (3, 32, 32) and b["images"].dtype == np.float32 for b in first)
    assert all(np.array_equal(x["images"], y["images"]) for x, y in zip(first, second, strict=True))
    assert calib.images_seen == 5 and list(calib.skipped) == [str(image_dir / "broken.jpg")]
    fixed = CalibrationSet.from_source(image_dir, "images", (32, 32), batch=2, fixed_batch=True)
    assert [b["images"].shape[0] for b in fixed] == [2, 2] and len(fixed) == 3  # the short last batch is dropped


def test_empty_or_unreadable_sources_fail_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(QuantError, match="no images found"):
        CalibrationSet.from_source(empty, "images", (32, 32), batch=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    calib = CalibrationSet.from_source(bad, "images", (32, 32), batch=1)
    with pytest.raises(QuantError, match="none of the 1 calibration images"):
        list(calib)

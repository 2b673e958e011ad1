"""A deterministic, seeded, labelled detection data set: eight shape classes on natural and textured scenes.

Made so that a small detector can be trained and evaluated offline (no labelled detection images install here),
and hard enough that quantization loss shows: varied colour, fill texture, scale (16 px up to 40 % of the image),
aspect, rotation, partial occlusion (up to 40 % of an object hidden) and truncation at the borders, clutter that
is not a class, blur, noise and JPEG artefacts. Each image is drawn from its own seed ``(seed, split, index)``,
so the output does not depend on the number of worker processes.

Layout written by :func:`generate_dataset` (Ultralytics finds ``labels/`` next to ``images/``)::

    out_dir/images/<split>/<split>_000000.jpg
    out_dir/labels/<split>/<split>_000000.txt      YOLO: class cx cy w h (normalised)
    out_dir/annotations/instances_<split>.json      COCO: boxes [x, y, w, h] in pixels, category ids 1..8
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from quant_common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_output_dir
from quant_common.errors import QuantError
from vision.data import textures as tex

CLASSES = ("ellipse", "rectangle", "triangle", "star", "hexagon", "cross", "ring", "arrow")
GENERATOR_VERSION = 1
_SUPERSAMPLE = 4  # anti-aliased edges: draw masks at 4x and box-filter down
_MAX_OCCLUSION = 0.4  # an object keeps at least 60 % of its pixels visible
_MIN_CONTRAST = 28.0  # mean |RGB change| an object must make on the image, or it is redrawn


@dataclass(frozen=True)
class Annotation:
    category: int  # index into CLASSES
    bbox_xywh: tuple[float, float, float, float]
    area: float


def _circle(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def shape_loops(category: int, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Unit-size outline(s) of a class: ``[outer, hole...]`` polygons, and the aspect range it may be stretched to."""
    name = CLASSES[category]
    if name == "ellipse":
        return [_circle()], 1.8
    if name == "rectangle":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)], 2.5
    if name == "triangle":
        angles = np.deg2rad([90, 210, 330]) + rng.uniform(-0.2, 0.2, 3)
        return [np.stack([np.cos(angles), np.sin(angles)], axis=1)], 1.4
    if name == "star":
        inner = rng.uniform(0.38, 0.55)
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) + np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)], 1.3
    if name == "hexagon":
        return [_circle(6)], 1.4
    if name == "cross":
        a = float(rng.uniform(0.22, 0.34))
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
               (-1, -a), (-a, -a)]
        return [np.array(pts, np.float64)], 1.5
    if name == "ring":
        return [_circle(), _circle() * rng.uniform(0.45, 0.7)], 1.6
    # arrow
    shaft = float(rng.uniform(0.15, 0.28))
    head = float(rng.uniform(0.0, 0.4))
    arrow = [(-1, -shaft), (head, -shaft), (head, -0.6), (1, 0), (head, 0.6), (head, shaft), (-1, shaft)]
    return [np.array(arrow, np.float64)], 1.4


def _transform(loops: list[np.ndarray], aspect: float, angle: float, radius: float,
               centre: tuple[float, float]) -> list[np.ndarray]:
    stretch = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [(loop * stretch) @ rot.T * radius + np.asarray(centre) for loop in loops]


def _rasterize(loops: list[np.ndarray], outline_px: float) -> tuple[int, int, np.ndarray, np.ndarray | None]:
    """Anti-aliased alpha of the filled loops (holes cut out) and of their outline, on a local canvas.

    Returns ``(x0, y0, fill_alpha, outline_alpha)``; alphas are float32 in [0, 1] of the canvas size.
    """
    pts = np.concatenate(loops)
    pad = 2 + int(np.ceil(outline_px))
    x0, y0 = int(np.floor(pts[:, 0].min())) - pad, int(np.floor(pts[:, 1].min())) - pad
    w = int(np.ceil(pts[:, 0].max())) + pad - x0
    h = int(np.ceil(pts[:, 1].max())) + pad - y0
    s = _SUPERSAMPLE

    def draw(fill_mode: bool) -> np.ndarray:
        canvas = Image.new("L", (w * s, h * s), 0)
        pen = ImageDraw.Draw(canvas)
        for i, loop in enumerate(loops):
            xy = [tuple(p) for p in ((loop - (x0, y0)) * s)]
            if fill_mode:
                pen.polygon(xy, fill=255 if i == 0 else 0)
            else:
                pen.line(xy + [xy[0]], fill=255, width=max(1, int(round(outline_px * s))), joint="curve")
        small = canvas.resize((w, h), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0

    return x0, y0, draw(True), (draw(False) if outline_px > 0 else None)


class _Scene:
    """One image being composed: pixels, which object owns each pixel, and each object's pixel counts."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.owner = np.full(image.shape[:2], -1, np.int32)
        self.full_area: list[int] = []
        self.visible: list[int] = []
        self.categories: list[int] = []
        self.regions: list[tuple[int, int, int, int]] = []

    def try_place(self, rng: np.random.Generator, category: int, size: float) -> bool:
        h, w = self.owner.shape
        loops, max_aspect = shape_loops(category, rng)
        aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
        centre = (rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h)
        outline = float(rng.uniform(1, 3.5)) if rng.random() < 0.3 else 0.0
        loops = _transform(loops, aspect, rng.uniform(0, 2 * np.pi), size / 2, centre)
        x0, y0, fill_alpha, outline_alpha = _rasterize(loops, outline)
        alpha = fill_alpha if outline_alpha is None else np.maximum(fill_alpha, outline_alpha)
        full_mask = alpha > 0.5
        full_area = int(full_mask.sum())
        # clip the local canvas to the image
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + alpha.shape[1], w), min(y0 + alpha.shape[0], h)
        if full_area < 40 or cx1 <= cx0 or cy1 <= cy0:
            return False
        local = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        region = (slice(cy0, cy1), slice(cx0, cx1))
        mask = full_mask[local]
        if mask.sum() < (1 - _MAX_OCCLUSION) * full_area:  # too much of it outside the image
            return False
        covered = self.owner[region][mask]
        covered = covered[covered >= 0]
        if covered.size:
            for j, count in zip(*np.unique(covered, return_counts=True), strict=True):
                if self.visible[j] - count < (1 - _MAX_OCCLUSION) * self.full_area[j]:
                    return False
        opacity = rng.uniform(0.8, 1.0) if rng.random() < 0.3 else 1.0
        ph, pw = mask.shape
        fill = tex.fill_texture(rng, pw, ph)
        if outline_alpha is not None:
            edge = outline_alpha[local][..., None]
            fill = fill * (1 - edge) + tex.random_colour(rng) * edge
        a = (alpha[local] * opacity)[..., None]
        before = self.image[region]
        after = before * (1 - a) + fill * a
        if float(np.abs(after - before)[mask].mean()) < _MIN_CONTRAST:
            fill = 255.0 - fill  # same shape, opposite colours: usually stands out
            after = before * (1 - a) + fill * a
            if float(np.abs(after - before)[mask].mean()) < _MIN_CONTRAST:
                return False
        self.image[region] = after
        index = len(self.categories)
        if covered.size:
            for j, count in zip(*np.unique(covered, return_counts=True), strict=True):
                self.visible[j] -= int(count)
        self.owner[region][mask] = index
        self.full_area.append(full_area)
        self.visible.append(int(mask.sum()))
        self.categories.append(category)
        self.regions.append((cy0, cy1, cx0, cx1))
        return True

    def annotations(self) -> list[Annotation]:
        """Boxes around each object's visible pixels (what a detector can see)."""
        result = []
        for index, (category, (y0, y1, x0, x1)) in enumerate(zip(self.categories, self.regions, strict=True)):
            ys, xs = np.nonzero(self.owner[y0:y1, x0:x1] == index)
            if xs.size < 20:
                continue
            bx0, by0 = x0 + int(xs.min()), y0 + int(ys.min())
            bw, bh = int(xs.max()) + 1 - (bx0 - x0), int(ys.max()) + 1 - (by0 - y0)
            if min(bw, bh) < 4:
                continue
            result.append(Annotation(category, (float(bx0), float(by0), float(bw), float(bh)), float(xs.size)))
        return result


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int, thin: bool) -> None:
    """Things that are not a class: lines, curves, dots and irregular blobs."""
    h, w = image.shape[:2]
    layer = Image.new("RGB", (w, h))
    alpha = Image.new("L", (w, h), 0)
    pen, apen = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = 0 if thin else int(rng.integers(3))
        if kind == 0:  # polyline
            n = int(rng.integers(2, 6))
            start = rng.uniform(0, 1, 2) * (w, h)
            pts = start + np.cumsum(rng.normal(0, 0.12 * w, (n, 2)), axis=0)
            xy = [tuple(p) for p in pts]
            width = int(rng.integers(1, 3 if thin else 6))
            pen.line(xy, fill=colour, width=width)
            apen.line(xy, fill=255, width=width)
        elif kind == 1:  # dots
            for _ in range(int(rng.integers(3, 15))):
                cx, cy = rng.uniform(0, 1, 2) * (w, h)
                r = rng.uniform(1, 4)
                pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
                apen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:  # irregular rock: low harmonics plus per-vertex jitter (higher harmonics made star/cross look-alikes)
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            radius = 1 + rng.uniform(-0.08, 0.08, t.size)
            for k in (2, 3):
                radius += rng.uniform(0.05, 0.2) * np.sin(k * t + rng.uniform(0, 2 * np.pi))
            size = rng.uniform(0.02, 0.15) * w
            centre = rng.uniform(0, 1, 2) * (w, h)
            xy = [tuple(p) for p in centre + size * radius.clip(0.2)[:, None] * np.stack([np.cos(t), np.sin(t)], 1)]
            pen.polygon(xy, fill=colour)
            apen.polygon(xy, fill=255)
    a = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0 * rng.uniform(0.6, 1.0)
    image *= 1 - a
    image += np.asarray(layer, dtype=np.float32) * a


def render_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[Annotation]]:
    """Draw one labelled image: ``(HxWx3 uint8 RGB, annotations)``."""
    scene = _Scene(tex.background(rng, width, height))
    _clutter(rng, scene.image, int(rng.integers(0, 8)), thin=False)
    side = min(width, height)
    low, high = np.log(max(12.0, 16.0 * side / 640)), np.log(0.4 * side)
    wanted = int(rng.integers(3, 15))
    placed = attempts = 0
    while placed < wanted and attempts < wanted * 6:
        attempts += 1
        if scene.try_place(rng, int(rng.integers(len(CLASSES))), float(np.exp(rng.uniform(low, high)))):
            placed += 1
    if rng.random() < 0.3:
        _clutter(rng, scene.image, int(rng.integers(1, 4)), thin=True)
    image = scene.image
    image = (image - image.mean()) * rng.uniform(0.8, 1.15) + image.mean() + rng.uniform(-20, 20)
    if rng.random() < 0.5:
        image = image + rng.normal(0, rng.uniform(2, 9), image.shape).astype(np.float32)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return np.asarray(pil), scene.annotations()


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: depends only on ``(seed, split, index)``."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def _encode_jpeg(image: np.ndarray, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(rng.integers(75, 96)))
    return buffer.getvalue()


def _write_labelled(args: tuple[Path, Path, int, str, int, int]) -> dict[str, Any]:
    images_dir, labels_dir, seed, split, index, imgsz = args
    rng = image_rng(seed, split, index)
    image, annotations = render_scene(rng, imgsz, imgsz)
    stem = f"{split}_{index:06d}"
    atomic_write_bytes(images_dir / f"{stem}.jpg", _encode_jpeg(image, rng))
    lines = [f"{a.category} {(a.bbox_xywh[0] + a.bbox_xywh[2] / 2) / imgsz:.6f} "
             f"{(a.bbox_xywh[1] + a.bbox_xywh[3] / 2) / imgsz:.6f} {a.bbox_xywh[2] / imgsz:.6f} "
             f"{a.bbox_xywh[3] / imgsz:.6f}" for a in annotations]
    atomic_write_text(labels_dir / f"{stem}.txt", "\n".join(lines) + ("\n" if lines else ""))
    return {"file_name": f"{stem}.jpg", "width": imgsz, "height": imgsz,
            "annotations": [(a.category, a.bbox_xywh, a.area) for a in annotations]}


def _write_unlabelled(args: tuple[Path, int, int, int]) -> None:
    out, seed, index, imgsz = args
    rng = image_rng(seed, "calibration", index)
    # varied sizes and aspect ratios, so calibration exercises the letterbox like real photos do
    width, height = (int(imgsz * f) for f in rng.uniform(0.5, 1.25, 2))
    image, _ = render_scene(rng, width, height)
    atomic_write_bytes(out / f"calib_{index:06d}.jpg", _encode_jpeg(image, rng))


def _run(func: Any, jobs: list[Any], workers: int | None, description: str) -> Iterable[Any]:
    # imported here: the training recipe imports this module in an environment that may lack rich
    from quant_common.progress import track

    workers = min(workers or os.cpu_count() or 1, len(jobs)) if jobs else 1
    if workers <= 1:
        return list(track((func(job) for job in jobs), description, total=len(jobs)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(track(pool.map(func, jobs, chunksize=max(1, len(jobs) // (workers * 8))), description,
                          total=len(jobs)))


def _check_counts(n: int, seed: int, imgsz: int) -> None:
    if n < 1:
        raise QuantError(f"number of images must be at least 1, got {n}", "pass a positive count")
    if imgsz < 64:
        raise QuantError(f"image size {imgsz} is too small for the synthetic scenes", "use --imgsz 64 or more")
    if seed < 0:
        raise QuantError(f"seed must be non-negative, got {seed}", "pass a seed >= 0")


def coco_dict(records: list[dict[str, Any]], seed: int, split: str) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record["file_name"], "width": record["width"],
                       "height": record["height"]})
        for category, bbox, area in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                                "bbox": [round(v, 2) for v in bbox], "area": area, "iscrowd": 0})
    return {
        "info": {"description": f"vision.data.synthetic shapes, split {split}", "seed": seed,
                 "generator_version": GENERATOR_VERSION},
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }


def generate_dataset(out_dir: str | os.PathLike[str], n_images: int, seed: int, imgsz: int = 640,
                     split: str = "val", workers: int | None = None) -> Path:
    """Write ``n_images`` labelled images of one split (COCO json + YOLO labels); returns the COCO json path."""
    _check_counts(n_images, seed, imgsz)
    root = ensure_output_dir(out_dir)
    images_dir = ensure_output_dir(root / "images" / split)
    labels_dir = ensure_output_dir(root / "labels" / split)
    jobs = [(images_dir, labels_dir, seed, split, i, imgsz) for i in range(n_images)]
    records = list(_run(_write_labelled, jobs, workers, f"generating {split} images"))
    return atomic_write_json(root / "annotations" / f"instances_{split}.json", coco_dict(records, seed, split))


def generate_calibration_images(out_dir: str | os.PathLike[str], n: int, seed: int, imgsz: int = 640,
                                workers: int | None = None) -> Path:
    """Write ``n`` unlabelled scenes of varied size for INT8 calibration; returns the directory."""
    _check_counts(n, seed, imgsz)
    out = ensure_output_dir(out_dir)
    _run(_write_unlabelled, [(out, seed, i, imgsz) for i in range(n)], workers, "generating calibration images")
    return out

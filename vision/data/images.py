"""Images → letterboxed NCHW float32 batches (Ultralytics-compatible preprocessing)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from quant_common.errors import QuantError
from quant_common.progress import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PAD_VALUE = 114  # Ultralytics' letterbox grey


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image was mapped into the network input: ``net = orig * ratio + (pad_x, pad_y)``."""

    ratio: float
    pad_x: float
    pad_y: float
    original_hw: tuple[int, int]

    def to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Undo the letterbox for ``[N, 4]`` xyxy boxes in network pixels, clipped to the original image."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.ratio
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.ratio
        h, w = self.original_hw
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes


def _to_rgb(opened: Image.Image) -> np.ndarray:
    img: Image.Image = ImageOps.exif_transpose(opened)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        img = Image.fromarray((array / peak * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((array.clip(0, 1) * 255.0).astype(np.uint8), mode="L")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as 8-bit RGB ``HxWx3``, applying EXIF orientation; gray, RGBA, palette and 16-bit too."""
    try:
        with Image.open(path) as opened:
            return _to_rgb(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise QuantError(f"cannot read image {path}: {exc}", "remove or replace the file") from exc


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) → 8-bit RGB ``HxWx3``, exactly as :func:`load_image` reads a file.

    ``max_pixels`` refuses larger images from their header, before any pixel is decoded (a server's guard).
    """
    if not data:
        raise QuantError("the image is empty (0 bytes)", "send the encoded bytes of a JPEG/PNG/... file")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if max_pixels is not None and width * height > max_pixels:
                raise QuantError(f"the image is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
                                 f"{max_pixels / 1e6:.0f} MP limit", "send a smaller image")
            return _to_rgb(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise QuantError(f"cannot decode the image ({len(data)} bytes): {exc}",
                         "send the encoded bytes of a JPEG/PNG/... file") from exc


def letterbox(image: np.ndarray, new_hw: tuple[int, int], pad_value: int = PAD_VALUE) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio (bilinear) and pad symmetrically, as Ultralytics' ``LetterBox(auto=False)``."""
    h, w = image.shape[:2]
    new_h, new_w = new_hw
    ratio = min(new_h / h, new_w / w)
    resized_w, resized_h = int(round(w * ratio)), int(round(h * ratio))
    pad_w, pad_h = (new_w - resized_w) / 2, (new_h - resized_h) / 2
    if (resized_w, resized_h) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((resized_w, resized_h), Image.Resampling.BILINEAR))
    top, left = int(round(pad_h - 0.1)), int(round(pad_w - 0.1))
    canvas = np.full((new_h, new_w, 3), pad_value, dtype=np.uint8)
    canvas[top:top + resized_h, left:left + resized_w] = image
    return canvas, LetterboxInfo(ratio=ratio, pad_x=left, pad_y=top, original_hw=(h, w))


def to_input_tensor(images: list[np.ndarray]) -> np.ndarray:
    """Stack letterboxed ``HxWx3`` uint8 RGB images into an ``NCHW`` float32 batch scaled to [0, 1]."""
    batch = np.stack(images).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def preprocess(path: str | os.PathLike[str], new_hw: tuple[int, int]) -> tuple[np.ndarray, LetterboxInfo]:
    """One image file → ``1x3xHxW`` float32 input and its letterbox mapping."""
    boxed, info = letterbox(load_image(path), new_hw)
    return to_input_tensor([boxed]), info


def list_images(source: str | os.PathLike[str]) -> list[Path]:
    """Images under a directory (recursive, sorted) or listed one per line in a text file."""
    src = Path(source)
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
        return [src]
    if src.is_file():
        base = src.parent
        paths = []
        for line in src.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else base / p)
        return paths
    raise QuantError(f"calibration data not found: {src}", "pass a directory of images or a text file listing them")


class CalibrationSet:
    """A deterministic, re-iterable source of ``{input_name: NCHW batch}`` feed dicts (Polygraphy's data loader).

    Images are decoded lazily on every pass (memory stays bounded whatever their number); files that cannot be
    decoded are skipped and counted in ``skipped``. The image order is fixed: sorted paths, then a seeded subset.
    """

    def __init__(self, paths: list[Path], input_name: str, input_hw: tuple[int, int], batch: int,
                 *, fixed_batch: bool = False, dtype: str = "float32", description: str = "calibrating") -> None:
        if not paths:
            raise QuantError("the calibration set is empty", "pass --calib-data with at least one image")
        self.paths = list(paths)
        self.input_name = input_name
        self.input_hw = input_hw
        self.batch = batch
        self.fixed_batch = fixed_batch  # the model cannot take a smaller last batch: drop it
        self.dtype = np.dtype(dtype)
        self.description = description
        self.skipped: dict[str, str] = {}
        self.images_seen = 0
        self.found = len(self.paths)  # images the source held before the seeded subset (from_source sets it)

    @classmethod
    def from_source(cls, source: str | os.PathLike[str], input_name: str, input_hw: tuple[int, int], batch: int,
                    *, max_images: int | None = None, seed: int = 0, fixed_batch: bool = False,
                    dtype: str = "float32") -> CalibrationSet:
        paths = list_images(source)
        if not paths:
            raise QuantError(f"no images found in {source} (looked for {', '.join(IMAGE_SUFFIXES)})",
                             "point --calib-data at a directory or list file of calibration images")
        missing = [p for p in paths if not p.is_file()]  # names in a list file that do not exist
        present = [p for p in paths if p.is_file()]
        if not present:
            raise QuantError(f"none of the {len(paths)} images listed in {source} exist", "fix the list file paths")
        calib = cls(select_subset(present, max_images, seed), input_name, input_hw, batch,
                    fixed_batch=fixed_batch, dtype=dtype)
        calib.skipped.update({str(p): "file not found" for p in missing})
        calib.found = len(present)
        return calib

    def __len__(self) -> int:
        """Number of batches per pass (an upper bound when unreadable files are skipped)."""
        full, rest = divmod(len(self.paths), self.batch)
        return full + (1 if rest and not self.fixed_batch else 0)

    def _images(self, paths: list[Path]) -> Iterator[np.ndarray]:
        for path in paths:
            try:
                boxed, _ = letterbox(load_image(path), self.input_hw)
            except QuantError as exc:
                self.skipped[str(path)] = exc.problem
                continue
            yield boxed

    def iter_batches(self, limit_images: int | None = None, progress: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yield feed dicts; ``limit_images`` stops after that many images (for agreement checks)."""
        paths = self.paths if limit_images is None else self.paths[:limit_images]
        batches = self._batches(paths)
        if progress:
            total = -(-len(paths) // self.batch)
            batches = track(batches, self.description, total=total)
        yield from batches

    def first_images(self, count: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches holding the first ``count`` readable images (unreadable files skipped, as in calibration)."""
        left = count
        for batch in self.iter_batches(progress=False):
            take = {k: v[:left] for k, v in batch.items()}
            left -= len(next(iter(take.values())))
            yield take
            if left <= 0:
                return

    def _batches(self, paths: list[Path]) -> Iterator[dict[str, np.ndarray]]:
        pending: list[np.ndarray] = []
        seen = 0
        for image in self._images(paths):
            pending.append(image)
            if len(pending) == self.batch:
                seen += len(pending)
                yield {self.input_name: to_input_tensor(pending).astype(self.dtype, copy=False)}
                pending = []
        if pending and not self.fixed_batch:
            seen += len(pending)
            yield {self.input_name: to_input_tensor(pending).astype(self.dtype, copy=False)}
        self.images_seen = seen
        if seen == 0 and self.fixed_batch and len(paths) - len(self.skipped) > 0:
            raise QuantError(f"fewer readable calibration images than the model's fixed batch of {self.batch}",
                             f"give at least {self.batch} images or re-export the model with a dynamic batch")
        if seen == 0:
            raise QuantError(f"none of the {len(paths)} calibration images could be read "
                             f"(first problem: {next(iter(self.skipped.values()), 'unknown')})",
                             "check that --calib-data holds valid image files")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iter_batches()


def select_subset(paths: list[Path], max_images: int | None, seed: int) -> list[Path]:
    """A seeded random subset of ``max_images`` paths, kept in sorted order (same seed → same subset)."""
    ordered = sorted(paths)
    if max_images is None or len(ordered) <= max_images:
        return ordered
    picked = np.random.default_rng(seed).choice(len(ordered), size=max_images, replace=False)
    return [ordered[i] for i in sorted(picked.tolist())]

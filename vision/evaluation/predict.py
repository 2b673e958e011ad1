"""Detect objects in images and draw the boxes (PIL), for a quick look at what a model sees."""

from __future__ import annotations

import ast
import colorsys
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from PIL import Image, ImageDraw

from quant_common.atomic import atomic_write_bytes, ensure_output_dir
from quant_common.errors import QuantError
from vision.backends.base import Runner
from vision.data.images import load_image
from vision.evaluation.evaluate import predict_images
from vision.evaluation.yolo import Detections


def class_names_from_onnx(path: str | os.PathLike[str]) -> list[str] | None:
    """Class names an Ultralytics export stores in its metadata (``names``: ``{0: 'person', ...}``), if any."""
    if Path(path).suffix.lower() != ".onnx":
        return None
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - names are a nicety; the runner reports unreadable models itself
        return None
    for prop in model.metadata_props:
        if prop.key == "names":
            try:
                names = ast.literal_eval(prop.value)  # a dict literal; literal_eval runs no code
            except (ValueError, SyntaxError):
                return None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def _colour(index: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: Detections, names: list[str] | None = None) -> Image.Image:
    """A copy of ``image`` with each box, its class and score drawn on it."""
    canvas = image.convert("RGB").copy()
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 320))
    for box, score, cls in zip(detections.boxes, detections.scores, detections.classes, strict=True):
        colour = _colour(int(cls))
        x0, y0, x1, y1 = (float(v) for v in box)
        # an untrained head can predict negative sizes; PIL refuses inverted rectangles
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        label = f"{names[int(cls)] if names and int(cls) < len(names) else int(cls)} {score:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), label)
        y_text = y0 - (bottom - top) - 2 if y0 - (bottom - top) - 2 >= 0 else y0
        pen.rectangle((x0, y_text, x0 + (right - left) + 4, y_text + (bottom - top) + 2), fill=colour)
        pen.text((x0 + 2, y_text), label, fill=(0, 0, 0))
    return canvas


def predict(runner: Runner, images: list[Path], save_dir: str | os.PathLike[str] | None, *, conf: float = 0.25,
            iou: float = 0.7, max_det: int = 300, imgsz: int = 640,
            names: list[str] | None = None) -> list[dict[str, Any]]:
    """Detect in each image; with ``save_dir``, write ``<stem>.jpg`` with the boxes drawn. Returns one record each."""
    if not images:
        raise QuantError("no images given", "pass one or more image files")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise QuantError(f"image not found: {missing[0]}", "check the path")
    out = ensure_output_dir(save_dir) if save_dir is not None else None
    runner.activate()
    predictions = predict_images(runner, [Path(p) for p in images], conf=conf, iou=iou, max_det=max_det,
                                 multi_label=False, imgsz=imgsz)
    records = []
    for path, (_, detections) in zip(images, predictions, strict=True):
        record = detection_record(path, detections, names)
        if out is not None:
            record["saved"] = str(save_drawn(out, path, load_image(path), detections, names))
        records.append(record)
    return records


def detection_record(image: str | os.PathLike[str], detections: Detections,
                     names: list[str] | None = None) -> dict[str, Any]:
    """One image's ``--json`` record (``vision-quant predict`` and ``detect`` share it)."""
    return {"image": str(image), "detections": [
        {"class": int(c), "name": names[int(c)] if names and int(c) < len(names) else None,
         "score": round(float(s), 4), "box_xyxy": [round(float(v), 2) for v in b]}
        for b, s, c in zip(detections.boxes, detections.scores, detections.classes, strict=True)]}


def save_drawn(out: Path, image_path: str | os.PathLike[str], image: np.ndarray, detections: Detections,
               names: list[str] | None = None) -> Path:
    """Write ``out/<stem>.jpg``: ``image`` (RGB) with the boxes drawn."""
    drawn = draw_detections(Image.fromarray(image), detections, names)
    buffer = io.BytesIO()
    drawn.save(buffer, format="JPEG", quality=92)
    return atomic_write_bytes(out / f"{Path(image_path).stem}.jpg", buffer.getvalue())

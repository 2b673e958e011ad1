"""Accuracy of the TensorRT-layout Q/DQ model (``model.int8.onnx``) with FP16 float parts (the default for TensorRT
>= 10 targets) against the same model with FP32 float parts and against FP32, run on demand.

TensorRT cannot run here, so the FP16 model is measured the way ``build`` checks it: FP32 arithmetic with every
FP16 tensor rounded to FP16 where it is written (``vision.backends.fp16_onnx.emulate_fp16_storage``; TensorRT's
FP16 kernels accumulate in FP32 and store FP16). ONNX Runtime's own CPU FP16 kernels are printed beside it to show
why they are not used. Uncertainty: the images are split into folds, the paired Δ per fold gives a mean ± 95 %
t-interval. Both builds share one calibration set (the same cache scales).

    .venv/bin/python benchmarks/trt_layout_fp16.py --val-images 200 --out out/trt_layout_fp16
    .venv/bin/python benchmarks/trt_layout_fp16.py MODEL.onnx --data DIR --annotations coco.json --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision.backends.onnxrt import OnnxrtRunner  # noqa: E402
from vision.config import BUNDLED_MODEL, load_config  # noqa: E402
from vision.data.synthetic import generate_calibration_images, generate_dataset  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
from vision.evaluation.evaluate import class_to_category, coco_map, predict_images, select_images  # noqa: E402
from vision.pipeline.build import build  # noqa: E402

T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26, 12: 2.20, 16: 2.13,
       20: 2.09}


def _records(image_ids: list[int], detections: list[Any], categories: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for image_id, found in zip(image_ids, detections, strict=True):
        rows = out.setdefault(image_id, [])
        for box, score, cls in zip(found.boxes, found.scores, found.classes, strict=True):
            if int(cls) < len(categories) and categories[int(cls)] >= 0:
                rows.append({"image_id": image_id, "category_id": categories[int(cls)], "score": float(score),
                             "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--data", type=Path, help="labelled images (default: a generated shapes val set)")
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/trt_layout_fp16"))
    args = parser.parse_args(argv)

    if args.data is None:
        args.annotations = generate_dataset(args.out / "val", args.val_images, seed=0, split="val")
        args.data = args.out / "val" / "images" / "val"
    calib = generate_calibration_images(args.out / "calib", args.calib_images, seed=1)
    builds = {}
    for choice in ("auto", "fp32"):
        cfg = load_config(model=args.model, calib_data=calib, out=args.out / f"build_{choice}", agreement_images=0,
                          trt_high_precision=choice)
        builds[choice] = build(cfg)
    auto, fp32 = builds["auto"], builds["fp32"]
    assert auto.int8 is not None and fp32.int8 is not None
    dtype = auto.int8.qdq["model.int8.onnx"]["high_precision_dtype"]
    variants = {
        "FP32": OnnxrtRunner(args.model, threads=args.threads),
        "TensorRT layout, FP32 float parts": OnnxrtRunner(fp32.out_dir / "model.int8.onnx", threads=args.threads),
        f"TensorRT layout, {dtype} float parts (default), FP16 emulated": OnnxrtRunner(
            auto.out_dir / "model.int8.onnx", threads=args.threads, fp16="emulated"),
        f"TensorRT layout, {dtype} float parts, ONNX Runtime FP16 kernels": OnnxrtRunner(
            auto.out_dir / "model.int8.onnx", threads=args.threads, fp16="native"),
        "ONNX Runtime layout (model.int8.ort.onnx)": OnnxrtRunner(auto.out_dir / "model.int8.ort.onnx",
                                                                  threads=args.threads),
    }
    coco, image_ids, paths, expected = select_images(args.data, args.annotations, args.val_images)
    folds = [image_ids[i::args.folds] for i in range(args.folds)]
    results: dict[str, Any] = {}
    per_fold: dict[str, list[float]] = {}
    for label, runner in variants.items():
        with runner:
            predictions = predict_images(runner, paths, conf=0.001, iou=0.7, max_det=300, multi_label=True,
                                         imgsz=args.imgsz, expected_hw=expected)
            backend = runner.backend
            channels = runner.output_specs()[0].shape[1]
        classes = channels - 4 if isinstance(channels, int) else len(coco.dataset["categories"])
        categories = class_to_category(coco, classes)
        records = _records(image_ids, [d for _, d in predictions], categories)
        everything = [r for rows in records.values() for r in rows]
        _, map50_95, map50 = coco_map(coco, everything, image_ids, 300)
        per_fold[label] = [coco_map(coco, [r for i in fold for r in records[i]], fold, 300)[1] for fold in folds]
        results[label] = {"map50_95": map50_95, "map50": map50, "backend": backend}
    reference = per_fold["FP32"]
    base = per_fold["TensorRT layout, FP32 float parts"]
    t = T95.get(args.folds, 2.0)

    def ci(values: list[float], against: list[float]) -> tuple[float, float]:
        diffs = 100.0 * (np.asarray(values) - np.asarray(against))
        return float(diffs.mean()), float(t * diffs.std(ddof=1) / np.sqrt(len(diffs)))

    print(f"model {args.model.name}; {len(image_ids)} images in {args.folds} folds; CPU {cpu_name()}; "
          f"flags {' '.join(cpu_flags())}; load average {os.getloadavg()[0]:.1f}")
    print("| model | runtime | mAP50-95 | mAP50 | Δ vs FP32, pts (95 % CI over folds) | Δ vs FP32-float layout, pts |")
    print("|---|---|---:|---:|---:|---:|")
    for label, row in results.items():
        d, h = ci(per_fold[label], reference)
        d2, h2 = ci(per_fold[label], base)
        row.update(delta_fp32=d, delta_fp32_ci=h, delta_fp32_layout=d2, delta_fp32_layout_ci=h2)
        print(f"| {label} | {row['backend']} | {row['map50_95']:.4f} | {row['map50']:.4f} | {d:+.2f} ± {h:.2f} | "
              f"{d2:+.2f} ± {h2:.2f} |")
    (args.out / "trt_layout_fp16.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`vision-quant build`: parse options, load the preset, call ``vision.pipeline.build.build``, print the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from quant_common.cli import handle_errors, print_json
from quant_common.stability import summary_line
from vision.calibration.calibrators import CALIBRATOR_NAMES
from vision.config import load_config
from vision.pipeline.build import build

EXAMPLES = """
Quantize a YOLOv8 ONNX export to INT8 (TensorRT calibration cache, Q/DQ ONNX for TensorRT and ONNX Runtime,
build.json, and a TensorRT engine where TensorRT is installed).

Examples:

  vision-quant build yolov8n.onnx --calib-data images/ --out build/yolov8n

  vision-quant build yolov8n.onnx --calib-data list.txt --calibrator entropy2 --max-calib-images 256 --json

  vision-quant build yolov8n_dynamic.onnx --calib-data images/ --imgsz 640 --batch 8

  vision-quant build --out out/yolov8      (the bundled detector, calibrated on generated images)

  vision-quant build yolov8n.onnx --calib-data images/ --accuracy-budget 0.5 --data val/ --annotations val.json
      (keep the most damaging layers in FP32 until INT8 is within 0.5 mAP50-95 points of FP32 on val/)
"""


def register(app: typer.Typer) -> None:
    app.command("build", help=EXAMPLES, no_args_is_help=False)(build_command)


@handle_errors
def build_command(
    model: Annotated[Path | None, typer.Argument(help="ONNX model (default: the bundled YOLOv8n detector)")] = None,
    calib_data: Annotated[Path | None, typer.Option(
        "--calib-data", help="Directory (recursive) or text file listing calibration images")] = None,
    max_calib_images: Annotated[int | None, typer.Option(help="Seeded random subset of this many images")] = None,
    batch: Annotated[int | None, typer.Option(help="Calibration batch (default: the model's, or 8 if dynamic)")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Largest batch of the TensorRT engine (dynamic-batch models; default 8)")] = None,
    imgsz: Annotated[str | None, typer.Option(help="Input size for dynamic H/W: 640 or H,W")] = None,
    calibrator: Annotated[str | None, typer.Option(help=" | ".join(CALIBRATOR_NAMES))] = None,
    percentile: Annotated[float | None, typer.Option(help="Percentile for --calibrator percentile")] = None,
    histogram: Annotated[str | None, typer.Option(
        help="fine (independent of order and batch) | trt (TensorRT's growing histogram)")] = None,
    precision: Annotated[str | None, typer.Option(help="int8 | fp16 | fp32")] = None,
    backend: Annotated[str | None, typer.Option(help="auto | onnxruntime | openvino | tensorrt")] = None,
    trt_version: Annotated[str | None, typer.Option(help="TensorRT version for the cache header, e.g. 8.6.1")] = None,
    trt_int8: Annotated[str | None, typer.Option(
        help="TensorRT INT8: auto | implicit (calibrators, 8.6-10.x) | explicit (Q/DQ, 10.x+)")] = None,
    calib_cache: Annotated[Path | None, typer.Option(help="Calibration cache (default: OUT/calibration.cache)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recalibrate even if the cache belongs elsewhere")] = False,
    simplify: Annotated[bool, typer.Option("--simplify", help="Run onnxslim on the model first")] = False,
    save_stats: Annotated[Path | None, typer.Option(help="Write the activation statistics to FILE.npz")] = None,
    calib_stability: Annotated[int | None, typer.Option(
        "--calib-stability", metavar="K",
        help="Also calibrate on K seeded half-subsets of the calibration batches and report each tensor's amax "
             "spread, flagging those moving more than --stability-threshold (the model still runs once per batch)")
    ] = None,
    stability_threshold: Annotated[float | None, typer.Option(
        help="Flag a tensor whose amax moves by more than this fraction over the subsets (default 0.1)")] = None,
    accuracy_budget: Annotated[float | None, typer.Option(
        help="mAP50-95 points INT8 may lose against FP32 on --data; keeps whole regions float, chosen on mAP and "
             "measured latency")] = None,
    data: Annotated[Path | None, typer.Option(help="Labelled images for --accuracy-budget")] = None,
    annotations: Annotated[Path | None, typer.Option(help="COCO json for --data")] = None,
    class_map: Annotated[Path | None, typer.Option(help="JSON/YAML model class -> category id for --annotations")] = None,
    budget_max_images: Annotated[int | None, typer.Option(
        help="Evaluate the budget on the first N images of --data (default 100)")] = None,
    budget_rule: Annotated[str | None, typer.Option(
        help="A float-layer set meets --accuracy-budget when: ci (default) = the upper end of its mAP loss's 95 % "
             "interval (paired bootstrap over the images) does | point = the measured loss does")] = None,
    keep_head_fp32: Annotated[bool | None, typer.Option(
        "--keep-head-fp32/--quantize-head", help="Keep the detection head's all-anchor part in float")] = None,
    ort_weights: Annotated[str | None, typer.Option(
        help="model.int8.ort.onnx weights: auto | int8 (exact only with VNNI) | uint8 (zero point 128)")] = None,
    ov_weight_bits: Annotated[str | None, typer.Option(
        help="model.int8.ov.onnx weight bits: auto | 8 (exact only with VNNI) | 7 (for CPUs without VNNI)")] = None,
    trt_high_precision: Annotated[str | None, typer.Option(
        help="model.int8.onnx unquantized layers: auto (default: fp16 for TensorRT >= 10 targets, which build it "
             "strongly typed) | fp16 | fp32")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the image subset and generated images")] = None,
    config: Annotated[str | None, typer.Option(help="Preset name or YAML file (default: yolov8)")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object")] = False,
) -> None:
    overrides: dict[str, Any] = {
        "model": model, "calib_data": calib_data, "max_calib_images": max_calib_images, "batch": batch,
        "max_batch": max_batch, "imgsz": imgsz, "calibrator": calibrator, "percentile": percentile, "histogram": histogram,
        "precision": precision, "backend": backend, "trt_version": trt_version, "trt_int8": trt_int8, "calib_cache": calib_cache,
        "force": force or None, "simplify": simplify or None, "save_stats": save_stats, "out": out, "seed": seed,
        "accuracy_budget": accuracy_budget, "data": data, "annotations": annotations, "class_map": class_map,
        "calib_stability": calib_stability, "stability_threshold": stability_threshold,
        "budget_max_images": budget_max_images, "budget_rule": budget_rule, "keep_head_fp32": keep_head_fp32,
        "ort_weights": ort_weights,
        "ov_weight_bits": ov_weight_bits, "trt_high_precision": trt_high_precision,
    }
    cfg = load_config(config, **overrides)
    result = build(cfg)
    summary = result.summary()
    if json_output:
        print_json(summary)
        mixed = summary.get("mixed_precision")
        if mixed and not mixed["met"]:
            typer.echo(f"warning: accuracy budget {mixed['budget']} not met (Δ {_loss_text(mixed)} mAP50-95 points)",
                       err=True)
        return
    _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"vision-quant build → {summary['out']}", show_header=True)
    table.add_column("artifact")
    table.add_column("path")
    for key, path in summary["artifacts"].items():
        table.add_row(key, path)
    console.print(table)
    if summary["calibrator"]:
        console.print(f"calibrator: {summary['calibrator']} {summary['calibrator_options']}; cache reused: "
                      f"{summary['cache_reused']}", markup=False)
        console.print(f"calibration images: {_calibration_text(summary)}", markup=False)
    stability = summary.get("calib_stability")
    if stability:
        console.print(f"scale stability: {summary_line(stability, 'tensors', 'images')}", markup=False)
    agreement = summary.get("agreement")
    if agreement:
        det = agreement.get("detection_match")
        console.print(f"FP32 vs INT8 ({agreement['model']}, {agreement['images']} images): cosine "
                      f"{agreement['cosine']:.4f}, max |diff| {agreement['max_abs_diff']:.4g}"
                      + (f", detections matched {det:.1%}" if det is not None else ""))
    ov_check = (summary.get("qdq") or {}).get("model.int8.ov.onnx", {}).get("openvino_check") or {}
    if "cosine" in ov_check:
        det = ov_check.get("detection_match")
        console.print(f"FP32 vs INT8 (model.int8.ov.onnx in OpenVINO, {ov_check['images']} images): cosine "
                      f"{ov_check['cosine']:.4f}" + (f", detections matched {det:.1%}" if det is not None else ""))
    mixed = summary.get("mixed_precision")
    if mixed:
        rule = "the upper end of its 95 % interval" if mixed.get("rule") == "ci" else "the measured loss"
        console.print(f"accuracy budget {mixed['budget']} mAP50-95 points ({rule}): "
                      f"{'met' if mixed['met'] else 'NOT met'} on {mixed.get('images')} images of {mixed['data']} "
                      f"(FP32 {mixed['map_fp32']:.4f}, INT8 {mixed['map_mixed']:.4f}, loss {_loss_text(mixed)} "
                      f"points, {len(mixed['excluded_nodes'])} layer(s) in float)", markup=False)
        if "delta_tensorrt_layout" in mixed:
            console.print(f"  model.int8.onnx (TensorRT layout, run by ONNX Runtime): loss "
                          f"{_loss_text(mixed, 'delta_tensorrt_layout')} points", markup=False)
        console.print(f"float regions: {mixed.get('float_by_region')}")
        verdict = mixed.get("recommendation")
        if verdict:
            console.print(f"recommended: {verdict['variant']}: {verdict['reason']}", highlight=False)
        if not mixed["met"]:
            console.print("warning: the budget was not met; the artifacts hold the most accurate INT8 found",
                          style="yellow")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings"].items())
    console.print(f"timings: {timings}")


def _loss_text(mixed: dict[str, Any], key: str = "delta") -> str:
    """``0.42 [0.10, 0.75]``: points below FP32 with the paired 95 % interval where build.json has one."""
    ci = mixed.get("delta_map_ci95" if key == "delta" else f"{key}_ci95")
    return f"{mixed[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _calibration_text(summary: dict[str, Any]) -> str:
    """How many calibration images were actually consumed, and where the others went."""
    counts = summary.get("calibration_images") or {}
    if summary.get("cache_reused"):
        return f"none read (the cache was reused; it was made from {summary['images']})"
    text = f"{summary['images']} used"
    if counts:
        text += f" of {counts['selected']} selected from {counts['found']} found"
        if counts.get("max_images") is not None and counts["found"] > counts["max_images"]:
            text += f" (seeded subset, --max-calib-images {counts['max_images']})"
        dropped = counts["selected"] - summary["images"] - counts["unreadable"]
        if counts["unreadable"]:
            text += f"; {counts['unreadable']} unreadable, skipped"
        if dropped > 0:
            text += f"; {dropped} left out to fill the model's fixed batch"
    return text


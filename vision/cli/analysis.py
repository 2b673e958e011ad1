"""`vision-quant eval | bench | predict | compare`: thin typer layers over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError
from quant_common.progress import track
from quant_common.search import BUDGET_RULES, DEFAULT_BUDGET_RULE
from vision.backends.select import load_runner
from vision.evaluation.bench import benchmark
from vision.evaluation.evaluate import EvalResult, evaluate
from vision.evaluation.map_bootstrap import delta_fields, map_estimates
from vision.evaluation.plots import per_class_chart
from vision.evaluation.predict import class_names_from_onnx, predict
from vision.evaluation.report import delta_text
from vision.evaluation.results import CompareResult
from vision.pipeline.compare import DEFAULT_CALIBRATORS, CompareOptions, compare

EVAL_HELP = """
COCO mAP50-95 / mAP50 (pycocotools) of a FP32 ONNX, a Q/DQ ONNX or a TensorRT engine on a labelled image set.
Model class i is the i-th category of the annotation file sorted by id, unless --class-map says otherwise.

Examples:

  vision-quant eval vision/assets/yolov8n_shapes.onnx --data shapes/images/val --annotations shapes/annotations/instances_val.json

  vision-quant eval build/model.int8.ort.onnx --data val/ --annotations val.json --max-images 100 --json

  vision-quant eval build/model.int8.ort.onnx --reference yolov8n.onnx --data val/ --annotations val.json
      (Δ mAP against the reference on the same images, with its paired 95 % bootstrap interval)

Every mAP comes with its 95 % interval over images (seeded bootstrap: a rerun prints the same interval).
"""

BENCH_HELP = """
Latency (p50/p90/p99) and throughput of an ONNX model or TensorRT engine after a warm-up, on random input.

Examples:

  vision-quant bench vision/assets/yolov8n_shapes.onnx --threads 2

  vision-quant bench build/model.int8.ort.onnx --batch 8 --iterations 20 --json
"""

PREDICT_HELP = """
Detect objects and draw the boxes on the images.

Examples:

  vision-quant predict vision/assets/yolov8n_shapes.onnx img1.jpg img2.jpg --save out/pred
"""

Backend = Annotated[str, typer.Option(help="auto | onnxruntime | openvino | tensorrt (auto: TensorRT for engines; "
                                           "for ONNX, OpenVINO where installed, else ONNX Runtime)")]
Threads = Annotated[int | None, typer.Option(help="Inference threads (ONNX Runtime intra-op / OpenVINO; default: all "
                                                  "cores)")]
OvPrecision = Annotated[str, typer.Option(help="OpenVINO float precision hint: f32 | bf16 | f16 (INT8 layers run in "
                                               "INT8 either way)")]
Imgsz = Annotated[int, typer.Option(help="Input size for models with dynamic height/width")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples of the images for the 95 % intervals")]

_VARIANTS = " | ".join(["FP32", *(f"INT8-{name}" for name in DEFAULT_CALIBRATORS), "INT8-mixed"])
COMPARE_HELP = f"""
One table {_VARIANTS} (mAP50-95, Δ vs FP32, latency under ONNX
Runtime), plus report.md and report.html with a mAP-vs-latency Pareto chart, activation histograms and each
calibrator's threshold, per-layer SQNR ranked, and mAP and latency bars. Where OpenVINO is installed, FP32, the
best calibrator's INT8 (its own layout, model.int8.<calibrator>.ov.onnx) and INT8-mixed-openvino run by OpenVINO
(f32 hint). INT8-mixed keeps whole regions (C2f modules, head branches) in float, chosen on the mAP and the latency
measured on its runtime, within --accuracy-budget (mAP50-95 points). Every row and every searched candidate is
timed in one interleaved loop; the table marks the Pareto front and recommends the fastest row within the budget
(a uniform INT8 row where no mixed one beats it).

Examples:

  vision-quant compare vision/assets/yolov8n_shapes.onnx --calib-data calib/ --data shapes/images/val --annotations shapes/annotations/instances_val.json --max-images 100 --out out/compare
"""


def register(app: typer.Typer) -> None:
    app.command("eval", help=EVAL_HELP)(eval_command)
    app.command("bench", help=BENCH_HELP)(bench_command)
    app.command("predict", help=PREDICT_HELP)(predict_command)
    app.command("compare", help=COMPARE_HELP)(compare_command)


def _progress() -> Any:
    return lambda items, description, total: track(items, description, total)


@handle_errors
def eval_command(
    artifact: Annotated[Path, typer.Argument(help="FP32 ONNX, Q/DQ ONNX or TensorRT .engine/.plan")],
    data: Annotated[Path, typer.Option("--data", help="Directory the annotation file's image names are under")],
    annotations: Annotated[Path, typer.Option("--annotations", help="COCO-format instances json")],
    class_map: Annotated[Path | None, typer.Option(
        help="JSON/YAML list or mapping: model class -> category id or name")] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold (Ultralytics val: 0.001)")] = 0.001,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold (Ultralytics val: 0.7)")] = 0.7,
    max_det: Annotated[int, typer.Option(help="Detections kept per image")] = 300,
    max_images: Annotated[int | None, typer.Option(help="Evaluate only the first N images (by id)")] = None,
    backend: Backend = "auto",
    threads: Threads = None,
    ov_precision: OvPrecision = "f32",
    imgsz: Imgsz = 640,
    plot: Annotated[Path | None, typer.Option(help="Write a per-class AP bar chart (PNG) here")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Also evaluate this model (e.g. the FP32 ONNX) on the same images and print Δ mAP against it")] = None,
    resamples: Resamples = 1000,
    json_output: JsonFlag = False,
) -> None:
    def run(model: Path) -> EvalResult:
        with load_runner(model, backend, threads, precision=ov_precision) as runner:
            found = evaluate(runner, data, annotations, class_map=class_map, conf=conf, iou=iou, max_det=max_det,
                             max_images=max_images, imgsz=imgsz, progress=None if json_output else _progress())
        found.artifact = str(model)
        assert found.matches is not None
        found.map50_95_ci95, found.map50_ci95 = (e.ci_list() for e in map_estimates(found.matches,
                                                                                   resamples=resamples))
        return found

    result = run(artifact)
    ref = run(reference) if reference is not None else None
    deltas = delta_fields(ref.matches, result.matches, resamples=resamples) \
        if ref is not None and ref.matches is not None and result.matches is not None else None
    if plot is not None:
        per_class_chart(result, plot)
    if json_output:
        print_json({**result.to_dict(), **(deltas or {}), **({"reference": {
            k: v for k, v in ref.to_dict().items() if k != "per_class"}} if ref is not None else {})})
        return
    table = Table(title=f"{artifact.name}: {result.images} images, {result.instances} boxes "
                        f"({result.backend}, {result.device}, {result.seconds:.1f} s)")
    for column in ("class", "instances", "mAP50-95", "mAP50"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.per_class:
        table.add_row(row.name, str(row.instances), f"{row.map50_95:.4f}", f"{row.map50:.4f}")
    table.add_row("[bold]all", str(result.instances), f"[bold]{_with_ci(result.map50_95, result.map50_95_ci95)}",
                  f"[bold]{_with_ci(result.map50, result.map50_ci95)}")
    console = Console()
    console.print(table)
    if ref is not None and deltas is not None:
        console.print(f"reference {Path(ref.artifact).name}: mAP50-95 {_with_ci(ref.map50_95, ref.map50_95_ci95)}, "
                      f"mAP50 {_with_ci(ref.map50, ref.map50_ci95)}")
        console.print(f"Δ vs reference (mAP points): mAP50-95 {_delta_text(deltas, '50_95')}, "
                      f"mAP50 {_delta_text(deltas, '50')}")
    console.print(f"[95 % intervals: seeded bootstrap over the {result.images} images, {resamples} resamples"
                  + (", paired for Δ]" if ref is not None else "]"), markup=False)


def _with_ci(value: float, ci: list[float] | None, digits: int = 4) -> str:
    return f"{value:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _delta_text(deltas: dict[str, Any], which: str) -> str:
    """``-1.23 [-1.60, -0.85]`` from the keys of ``vision.evaluation.map_bootstrap.delta_fields``."""
    return delta_text(deltas[f"delta_map{which}"], deltas["delta_map_ci95" if which == "50_95" else
                                                          f"delta_map{which}_ci95"])


@handle_errors
def bench_command(
    artifact: Annotated[Path, typer.Argument(help="ONNX model or TensorRT .engine/.plan")],
    batch: Annotated[int, typer.Option(help="Images per inference")] = 1,
    warmup: Annotated[int, typer.Option(help="Untimed inferences first")] = 10,
    iterations: Annotated[int, typer.Option(help="Timed inferences")] = 50,
    threads: Threads = None,
    ov_precision: OvPrecision = "f32",
    backend: Backend = "auto",
    imgsz: Imgsz = 640,
    json_output: JsonFlag = False,
) -> None:
    runner = load_runner(artifact, backend, threads, precision=ov_precision)
    with runner:
        result = benchmark(runner, batch=batch, warmup=warmup, iterations=iterations, imgsz=imgsz, threads=threads)
    result.artifact = str(artifact)
    if json_output:
        print_json(result.to_dict())
        return
    lat = result.latency_ms
    typer.echo(f"{artifact.name}: {result.backend} on {result.device} ({result.cpu}), threads {result.threads}, "
               f"input {result.input_shape}")
    typer.echo(f"latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  mean {lat['mean']:.2f}"
               f"  ({result.iterations} runs after {result.warmup} warm-up)")
    typer.echo(f"throughput: {result.throughput_ips:.1f} images/s at batch {result.batch}")


@handle_errors
def predict_command(
    artifact: Annotated[Path, typer.Argument(help="ONNX model or TensorRT .engine/.plan")],
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    save: Annotated[Path | None, typer.Option("--save", help="Directory for the images with boxes drawn")] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold")] = 0.25,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold")] = 0.7,
    max_det: Annotated[int, typer.Option(help="Detections kept per image")] = 300,
    names: Annotated[Path | None, typer.Option(
        help="Class names, one per line (default: the ONNX file's Ultralytics metadata)")] = None,
    backend: Backend = "auto",
    threads: Threads = None,
    ov_precision: OvPrecision = "f32",
    imgsz: Imgsz = 640,
    json_output: JsonFlag = False,
) -> None:
    class_names = _read_names(names) if names is not None else class_names_from_onnx(artifact)
    runner = load_runner(artifact, backend, threads, precision=ov_precision)
    with runner:
        records = predict(runner, images, save, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz,
                          names=class_names)
    if json_output:
        print_json({"artifact": str(artifact), "images": records})
        return
    for record in records:
        counts: dict[str, int] = {}
        for det in record["detections"]:
            label = det["name"] or str(det["class"])
            counts[label] = counts.get(label, 0) + 1
        summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items())) or "nothing"
        typer.echo(f"{record['image']}: {summary}" + (f" -> {record['saved']}" if "saved" in record else ""))


def _read_names(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise QuantError(f"cannot read class names {path}: {exc.strerror or exc}", "pass a text file") from exc


@handle_errors
def compare_command(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX model")],
    calib_data: Annotated[Path, typer.Option("--calib-data", help="Calibration images (directory or list file)")],
    data: Annotated[Path, typer.Option("--data", help="Directory the annotation file's image names are under")],
    annotations: Annotated[Path, typer.Option("--annotations", help="COCO-format instances json")],
    out: Annotated[Path, typer.Option(help="Output directory (models, compare.json, report.md/html)")] = Path(
        "out/compare"),
    calibrators: Annotated[str, typer.Option(help="Comma-separated calibrators")] = ",".join(DEFAULT_CALIBRATORS),
    percentile: Annotated[float, typer.Option(help="Percentile for the percentile calibrator")] = 99.99,
    max_calib_images: Annotated[int, typer.Option(help="Seeded subset of calibration images")] = 64,
    max_images: Annotated[int | None, typer.Option(help="Evaluate only the first N images (by id)")] = None,
    accuracy_budget: Annotated[float, typer.Option(help="mAP50-95 points INT8-mixed may lose against FP32")] = 0.5,
    bench_iterations: Annotated[int, typer.Option(help="Timed inferences per variant")] = 10,
    class_map: Annotated[Path | None, typer.Option(help="Model class -> category map (see eval)")] = None,
    threads: Threads = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration subset")] = 0,
    budget_rule: Annotated[str, typer.Option(
        help="INT8-mixed meets the budget when: ci = the upper end of its loss's 95 % interval does | point = the "
             "measured loss does")] = DEFAULT_BUDGET_RULE,
    resamples: Resamples = 1000,
    json_output: JsonFlag = False,
) -> None:
    if budget_rule not in BUDGET_RULES:
        raise QuantError(f"unknown --budget-rule {budget_rule!r}", f"choose one of {', '.join(BUDGET_RULES)}")
    opts = CompareOptions(calibrators=[c.strip() for c in calibrators.split(",") if c.strip()],
                          percentile=percentile, max_calib_images=max_calib_images, max_images=max_images,
                          accuracy_budget=accuracy_budget, bench_iterations=bench_iterations, threads=threads,
                          class_map=class_map, seed=seed, budget_rule=budget_rule, resamples=resamples)
    result = compare(model, calib_data, data, annotations, out, opts,
                     progress=None if json_output else _progress())
    if json_output:
        print_json({"table": result.table(), "recommendation": result.recommendation, "mixed": result.mixed,
                    "artifacts": result.artifacts, "images": result.images, "timings": result.timings})
        return
    console = Console()
    console.print(compare_table(result))
    verdict = result.recommendation
    if verdict:
        console.print(f"recommended: [bold]{verdict['variant']}[/bold]: {verdict['reason']}", highlight=False)
    console.print(f"Δ pts: mAP50-95 points against FP32 with the 95 % interval of a seeded paired bootstrap over "
                  f"the {result.images} images ({resamples} resamples)", markup=False)
    console.print(f"reports: {result.artifacts.get('report.html')}  {result.artifacts.get('report.md')}")


def compare_table(result: CompareResult) -> Table:
    """compare's terminal table, readable at 80 columns: every variant's full name (the column never wraps or
    truncates, the others are short), the runtime, mAP50-95 with its Δ and the Δ's 95 % interval, p50 latency and
    speed-up, float layers, and
    ★ for the recommended row / • for the rest of the Pareto front."""
    table = Table(title=f"{Path(result.model).name}: {result.images} images", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True,  # two spaces between columns: the Δ interval still fits in 80
                  caption="★ recommended  • Pareto front (mAP vs latency)", caption_justify="left")
    width = max(len(v.name) for v in result.variants)
    table.add_column("variant", no_wrap=True, min_width=width)
    for column in ("rt", "mAP50-95", "Δ pts [95 %]", "ms", "×FP32", "float", ""):
        table.add_column(column, justify="left" if column in ("rt", "") else "right", no_wrap=True)
    for row in result.table():
        mark = "★" if row["recommended"] else "•" if row["pareto"] else ""
        table.add_row(row["variant"], "OV" if row["runtime"] == "openvino" else "ORT", f"{row['map50_95']:.4f}",
                      delta_text(row["delta_map50_95"], row["delta_map_ci95"], compact=True), f"{row['latency_ms']:.1f}",
                      f"{row['speedup']:.2f}",
                      str(row["excluded_layers"]), mark)
    return table

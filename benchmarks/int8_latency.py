"""Every runtime x precision on one CPU, side by side: ONNX Runtime and OpenVINO, FP32 and the three INT8 layouts.

All rows run in one process on the same letterboxed image, batch 1: warm-up, then the median over repetitions that
alternate between the rows (so a busy machine slows all alike); ratios are against ONNX Runtime FP32 and OpenVINO
FP32 with the f32 hint. With ``--data/--annotations`` each row's mAP50-95 comes too (Δ against ONNX Runtime FP32).
The CPU's model name and SIMD flags (from /proc/cpuinfo) are printed with the table.

    .venv/bin/python benchmarks/int8_latency.py MODEL.onnx --calib-data DIR [--build OUT] [--threads 2]
        [--data shapes/images/val --annotations shapes/annotations/instances_val.json --max-images 150] [--plot x.png]

Without --build, the INT8 models are built first with `vision.pipeline.build.build` (ONNX Runtime backend). Rows whose
runtime is not installed are left out. ``int8_latency_rows`` (FP32 vs the ORT layout at batch 1 and 8) serves
benchmarks/calibration.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quant_common.errors import is_importable  # noqa: E402
from vision.backends.onnxrt import create_session  # noqa: E402
from vision.backends.select import load_runner  # noqa: E402
from vision.config import load_config  # noqa: E402
from vision.data.images import CalibrationSet  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
from vision.evaluation.evaluate import evaluate  # noqa: E402
from vision.model import load_model, resolve_input_hw  # noqa: E402
from vision.pipeline.build import build  # noqa: E402


def _median_ms(sessions: Sequence[Any], feeds: dict[str, np.ndarray], warmup: int, repeats: int) -> list[float]:
    """Median latency of each session; repetitions alternate between them so both see the same machine load."""
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for index, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feeds)
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def build_int8(model: Path, calib_dir: Path | None, work_dir: Path, imgsz: tuple[int, int] | None = None) -> Path:
    cfg = load_config(model=model, calib_data=calib_dir, out=work_dir, backend="onnxruntime", imgsz=imgsz,
                      agreement_images=0, max_calib_images=32)
    return build(cfg).artifacts["qdq_ort"]


def int8_latency_rows(model: str | Path, calib_dir: str | Path | None, *, int8_model: str | Path | None = None,
                      batches: Sequence[int] = (1, 8), imgsz: tuple[int, int] | None = None, warmup: int = 3,
                      repeats: int = 20, threads: int | None = None) -> list[dict[str, Any]]:
    """One row per batch size: ``{"batch", "fp32_ms", "int8_ms", "speedup"}`` (speedup = fp32 / int8)."""
    model = Path(model)
    info, _ = load_model(model)
    hw = resolve_input_hw(info, imgsz)
    usable = [b for b in batches if info.fixed_batch is None or b == info.fixed_batch] or [info.fixed_batch or 1]
    with tempfile.TemporaryDirectory(prefix="vq-bench-") as tmp:
        int8_path = Path(int8_model) if int8_model else build_int8(model, Path(calib_dir) if calib_dir else None,
                                                                    Path(tmp) / "out", imgsz)
        fp32, int8 = create_session(model, threads), create_session(int8_path, threads)
        rows = []
        for batch in usable:
            if calib_dir:
                calib = CalibrationSet.from_source(calib_dir, info.input_name, hw, batch)
                images = next(calib.iter_batches(limit_images=batch, progress=False))[info.input_name]
                images = np.concatenate([images] * -(-batch // len(images)))[:batch]
            else:
                images = np.random.default_rng(0).random((batch, 3, *hw), dtype=np.float32)
            feeds = {info.input_name: images.astype(info.input_dtype)}
            fp32_ms, int8_ms = _median_ms([fp32, int8], feeds, warmup, repeats)
            rows.append({"batch": batch, "fp32_ms": round(fp32_ms, 2), "int8_ms": round(int8_ms, 2),
                         "speedup": round(fp32_ms / int8_ms, 2)})
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(title)
    print(f"{'batch':>5} | {'FP32 ms':>9} | {'INT8 ms':>9} | {'FP32/INT8':>9}")
    print("-" * 42)
    for r in rows:
        print(f"{r['batch']:>5} | {r['fp32_ms']:>9.2f} | {r['int8_ms']:>9.2f} | {r['speedup']:>8.2f}x")


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(x - 0.2, [r["fp32_ms"] for r in rows], 0.4, label="FP32")
    ax.bar(x + 0.2, [r["int8_ms"] for r in rows], 0.4, label="INT8 (ORT layout)")
    ax.set_xticks(x, [f"batch {r['batch']}\n{r['speedup']:.2f}x" for r in rows])
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title.replace(": ", "\n", 1), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# -- all runtimes x precisions ---------------------------------------------------------------------------------
# (row label, artifact key, backend, OpenVINO precision hint)
MATRIX = (
    ("ORT FP32", "fp32", "onnxruntime", "f32"),
    ("ORT INT8 ort layout", "model.int8.ort.onnx", "onnxruntime", "f32"),
    ("ORT INT8 TensorRT layout", "model.int8.onnx", "onnxruntime", "f32"),
    ("OV FP32 (f32 hint)", "fp32", "openvino", "f32"),
    ("OV FP32 (bf16 hint)", "fp32", "openvino", "bf16"),
    ("OV INT8 TensorRT layout", "model.int8.onnx", "openvino", "f32"),
    ("OV INT8 ort layout", "model.int8.ort.onnx", "openvino", "f32"),
    ("OV INT8 ov layout", "model.int8.ov.onnx", "openvino", "f32"),
    # the float remainder (SiLU, Add, Concat, the head's decode) in bf16: what --ov-precision bf16 gives an INT8 file
    ("OV INT8 ov layout bf16", "model.int8.ov.onnx", "openvino", "bf16"),
)


def runtime_matrix(model: Path, artifacts: dict[str, Path], feeds: dict[str, np.ndarray], *, threads: int | None,
                   warmup: int, repeats: int, data: Path | None = None, annotations: Path | None = None,
                   max_images: int | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    runners = []
    for label, key, backend, precision in MATRIX:
        path = model if key == "fp32" else artifacts.get(key)
        if path is None or not path.is_file() or not is_importable(backend):
            continue
        runner = load_runner(path, backend, threads, precision=precision)
        runner.activate()
        runners.append(runner)
        rows.append({"row": label, "artifact": path.name, "backend": runner.backend})
    times: list[list[float]] = [[] for _ in runners]
    for runner in runners:
        for _ in range(warmup):
            runner.infer(feeds)
    for _ in range(repeats):
        for index, runner in enumerate(runners):
            start = time.perf_counter()
            runner.infer(feeds)
            times[index].append(time.perf_counter() - start)
    for row, t in zip(rows, times, strict=True):
        row["ms"] = round(statistics.median(t) * 1e3, 2)
    base = {r["row"]: r["ms"] for r in rows}
    for row in rows:
        row["vs_ort_fp32"] = round(base["ORT FP32"] / row["ms"], 2)
        row["vs_ov_f32"] = round(base["OV FP32 (f32 hint)"] / row["ms"], 2) if "OV FP32 (f32 hint)" in base else None
    if data is not None and annotations is not None:
        for row, runner in zip(rows, runners, strict=True):
            row["map50_95"] = round(evaluate(runner, data, annotations, max_images=max_images).map50_95, 4)
        for row in rows:
            row["delta_pts"] = round(100 * (row["map50_95"] - rows[0]["map50_95"]), 2)
    for runner in runners:
        runner.deactivate()
    return rows


def print_matrix(rows: list[dict[str, Any]], title: str) -> None:
    print(title)
    has_map = "map50_95" in rows[0]
    header = f"{'runtime / artifact':<26} | {'ms':>8} | {'ORT FP32/x':>10} | {'OV f32/x':>8}"
    print(header + (f" | {'mAP50-95':>8} | {'Δ pts':>6}" if has_map else ""))
    print("-" * (len(header) + (21 if has_map else 0)))
    for r in rows:
        line = (f"{r['row']:<26} | {r['ms']:>8.2f} | {r['vs_ort_fp32']:>9.2f}x | "
                + (f"{r['vs_ov_f32']:>7.2f}x" if r["vs_ov_f32"] is not None else f"{'-':>8}"))
        print(line + (f" | {r['map50_95']:>8.4f} | {r['delta_pts']:>+6.2f}" if has_map else ""))


def plot_matrix(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#1f77b4" if r["backend"] == "onnxruntime" else "#ff7f0e" for r in rows]
    ax.barh([r["row"] for r in rows][::-1], [r["ms"] for r in rows][::-1], color=colors[::-1])
    for i, r in enumerate(rows[::-1]):
        note = f" {r['ms']:.1f} ms ×{r['vs_ort_fp32']:.2f}" + (f", mAP {r['map50_95']:.3f}" if "map50_95" in r else "")
        ax.text(r["ms"], i, note, va="center", fontsize=7)
    ax.set_xlabel("median latency, batch 1 (ms)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--calib-data", type=Path, default=None)
    parser.add_argument("--build", type=Path, default=None, help="an existing `vision-quant build` output directory")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="labelled images for mAP (with --annotations)")
    parser.add_argument("--annotations", type=Path, default=None)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="save a bar chart (PNG)")
    parser.add_argument("--json", type=Path, default=None, help="save the rows as JSON")
    args = parser.parse_args(argv)
    imgsz = (args.imgsz, args.imgsz) if args.imgsz else None
    info, _ = load_model(args.model)
    hw = resolve_input_hw(info, imgsz)
    with tempfile.TemporaryDirectory(prefix="vq-bench-") as tmp:
        build_dir = args.build
        if build_dir is None:
            build_dir = build_int8(args.model, args.calib_data, Path(tmp) / "out", imgsz).parent
        artifacts = {p.name: p for p in build_dir.glob("model.int8*.onnx")}
        if args.calib_data:
            calib = CalibrationSet.from_source(args.calib_data, info.input_name, hw, info.fixed_batch or 1)
            images = next(calib.iter_batches(limit_images=1, progress=False))[info.input_name]
        else:
            images = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
        feeds = {info.input_name: images.astype(info.input_dtype)}
        rows = runtime_matrix(args.model, artifacts, feeds, threads=args.threads, warmup=args.warmup,
                              repeats=args.repeats, data=args.data, annotations=args.annotations,
                              max_images=args.max_images)
    name, flags = cpu_name(), cpu_flags()
    title = (f"{args.model.name}, batch 1, threads {args.threads or 'all'}, median of {args.repeats} interleaved; "
             f"{name}, flags: {' '.join(flags) or 'unknown'}")
    print_matrix(rows, title)
    if args.json:
        args.json.write_text(json.dumps({"title": title, "cpu": name, "flags": flags, "rows": rows}, indent=1))
    if args.plot:
        plot_matrix(rows, args.plot, title.replace("; ", "\n", 1))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

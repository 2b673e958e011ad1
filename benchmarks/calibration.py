"""Calibration speed and stability, measured side by side in one run on this machine.

1. Entropy2 search: ours (``vision.calibration.calibrators``) vs modelopt's ``_compute_amax_entropy`` on the *same* histograms
   (the model's real activation histograms); goal >= 100x faster. modelopt's pure-Python loop takes seconds per
   tensor, so it is timed on ``--modelopt-tensors`` tensors spread over the model and compared per tensor; every
   one of those must pick the same bin.
2. Statistics collection (``ActivationCollector``, fine histogram) vs plain FP32 ONNX Runtime inference over the
   same pre-decoded images and batches; goal ratio <= 1.3. TensorRT's growing histogram ("trt") is timed too.
3. Order/batch dependence: entropy2 thresholds from the images in file order at ``--batch`` vs shuffled at batch 1,
   for the fine histogram (ours, should not move) and TensorRT's growing one (NVIDIA/TensorRT#1411).
4. FP32 vs INT8 latency from ``benchmarks/int8_latency.py`` when present (``int8_latency_rows``).

    .venv/bin/python benchmarks/calibration.py --model yolov8n.onnx [--calib-data DIR] [--images 16] [--out DIR]

Without --calib-data, ``--images`` synthetic images (smooth backgrounds, noise, rectangles) are generated in a
temporary directory. Without --model, the bundled detector (vision/assets/yolov8n_shapes.onnx: its batch is fixed at 1,
so section 3 varies the order only), else the tests' tiny generated model with a dynamic batch.
The CPU's model name and SIMD flags (/proc/cpuinfo) are printed with the table.
Prints a table, writes ``calibration.json`` and ``calibration.png`` under --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vision.backends.onnxrt import create_session  # noqa: E402
from vision.calibration.calibrators import compute_all, entropy2_bin  # noqa: E402
from vision.calibration.stats import ActivationCollector, TensorStats, save_stats  # noqa: E402
from vision.config import BUNDLED_MODEL  # noqa: E402
from vision.data.images import CalibrationSet  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
from vision.model import load_model, resolve_input_hw  # noqa: E402


def synthetic_images(directory: Path, count: int, size: int = 640, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for index in range(count):
        base = (np.sin(xx / rng.uniform(20, 90)) + np.cos(yy / rng.uniform(20, 90))) * 50 + rng.uniform(60, 180)
        image = base[..., None] * rng.uniform(0.6, 1.2, 3) + rng.normal(0, 10, (size, size, 3))
        for _ in range(rng.integers(3, 12)):
            y0, x0 = rng.integers(0, size - 40, 2)
            h, w = rng.integers(20, size // 3, 2)
            image[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(directory / f"synthetic_{index:03d}.jpg")
    return directory


def decoded_batches(calib_dir: Path, input_name: str, hw: tuple[int, int], batch: int, images: int,
                    fixed_batch: bool) -> list[dict[str, np.ndarray]]:
    calib = CalibrationSet.from_source(calib_dir, input_name, hw, batch, max_images=images, fixed_batch=fixed_batch)
    return list(calib.iter_batches(progress=False))


class Clock:
    """Wall and process CPU time (all threads: ONNX Runtime's and the counting pool's) of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_plain(session: Any, batches: list[dict[str, np.ndarray]]) -> Clock:
    with Clock() as clock:
        for feeds in batches:
            session.run(None, feeds)
    return clock


def time_collect(model: Path, batches: list[dict[str, np.ndarray]], mode: str,
                 threads: int | None) -> tuple[Clock, Clock, dict[str, TensorStats]]:
    collector = ActivationCollector(model, histogram=mode, threads=threads)  # type: ignore[arg-type]
    with Clock() as collected:
        for feeds in batches:
            collector.collect(feeds)
        collector.flush()  # the last batch's counting belongs to collection time
    with Clock() as finished:
        stats = collector.result()
    collector.close()
    return collected, finished, stats


def collection_rows(model: Path, batches: list[dict[str, np.ndarray]], threads: int | None,
                    rounds: int) -> tuple[dict[str, Any], dict[str, TensorStats]]:
    """Plain inference, fine and trt collection, interleaved ``rounds`` times (medians): drift and other load on
    the machine hit all three alike. Ratios are given on wall time and on process CPU time."""
    session = create_session(model, threads)
    session.run(None, batches[0])
    for mode in ("fine", "trt"):  # warm-up: sessions, numba's first calls
        warm = ActivationCollector(model, histogram=mode)  # type: ignore[arg-type]
        warm.collect(batches[0])
        warm.close()
    samples: dict[str, list[tuple[float, float, float]]] = {"plain": [], "fine": [], "trt": []}
    fine_stats: dict[str, TensorStats] = {}
    for _ in range(rounds):
        plain = time_plain(session, batches)
        samples["plain"].append((plain.wall, plain.cpu, 0.0))
        for mode in ("fine", "trt"):
            collected, finished, stats = time_collect(model, batches, mode, threads)
            samples[mode].append((collected.wall, collected.cpu, finished.wall))
            fine_stats = stats if mode == "fine" else fine_stats
    plain_wall = statistics.median(x[0] for x in samples["plain"])
    plain_cpu = statistics.median(x[1] for x in samples["plain"])
    rows: dict[str, Any] = {"plain_s": plain_wall, "plain_cpu_s": plain_cpu, "rounds": rounds}
    for mode in ("fine", "trt"):
        wall = statistics.median(x[0] for x in samples[mode])
        cpu = statistics.median(x[1] for x in samples[mode])
        rows[mode] = {"collect_s": wall, "collect_cpu_s": cpu, "result_s": statistics.median(x[2] for x in samples[mode]),
                      "ratio": wall / plain_wall, "cpu_ratio": cpu / plain_cpu}
    return rows, fine_stats


def modelopt_entropy() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.calib.histogram import _compute_amax_entropy
    return _compute_amax_entropy


def entropy_rows(stats: dict[str, TensorStats], sample: int) -> dict[str, Any]:
    first = next(iter(stats.values()))
    entropy2_bin(first.hist, first.edges)  # warm-up (memoised cut boundaries)
    with Clock() as all_tensors:
        compute_all(stats, "entropy2")
    names = [name for name in stats if stats[name].hist.sum() > 0]
    picked = [names[int(i)] for i in np.linspace(0, len(names) - 1, min(sample, len(names)))]
    reference = modelopt_entropy()
    ours_times, theirs_times, same = [], [], 0
    for name in picked:
        item = stats[name]
        start = time.perf_counter()
        ours_bin = entropy2_bin(item.hist, item.edges)
        ours_times.append(time.perf_counter() - start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            amax = float(reference(item.hist.copy(), item.edges, 8, False))
            theirs_times.append(time.perf_counter() - start)
        same += int(np.float32(item.edges[ours_bin]) == np.float32(amax))
    ours_each, theirs_each = statistics.mean(ours_times), statistics.mean(theirs_times)
    return {"tensors": len(stats), "ours_all_tensors_s": all_tensors.wall, "ours_all_tensors_cpu_s": all_tensors.cpu, "ours_per_tensor_ms": ours_each * 1e3,
            "modelopt_per_tensor_s": theirs_each, "modelopt_tensors_timed": len(picked),
            "speedup": theirs_each / ours_each, "same_bin": f"{same}/{len(picked)}"}


def relative_deltas(a: dict[str, float], b: dict[str, float]) -> list[float]:
    return [abs(a[n] - b[n]) / max(abs(b[n]), 1e-12) for n in a if b[n] > 0 or a[n] > 0]


def order_rows(model: Path, batches: list[dict[str, np.ndarray]], single: list[dict[str, np.ndarray]],
               threads: int | None) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    shuffled = [single[int(i)] for i in rng.permutation(len(single))]
    result: dict[str, Any] = {}
    for mode in ("fine", "trt"):
        runs = []
        for feeds_list in (batches, shuffled):
            collector = ActivationCollector(model, histogram=mode, threads=threads)  # type: ignore[arg-type]
            for feeds in feeds_list:
                collector.collect(feeds)
            runs.append(compute_all(collector.result(), "entropy2"))
            collector.close()
        deltas = relative_deltas(runs[1], runs[0])
        result[mode] = {"median_pct": 100 * statistics.median(deltas), "max_pct": 100 * max(deltas),
                        "over_1pct": sum(d > 0.01 for d in deltas), "tensors": len(deltas), "deltas": deltas}
    return result


def int8_latency_rows(model: Path, calib_dir: Path, imgsz: tuple[int, int] | None) -> list[dict[str, Any]] | None:
    """FP32 vs INT8 latency rows from benchmarks/int8_latency.py (the pipeline's benchmark), if it exists."""
    path = Path(__file__).with_name("int8_latency.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("benchmarks_int8_latency", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows: list[dict[str, Any]] = module.int8_latency_rows(model, calib_dir, imgsz=imgsz)
    return rows


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Calibration benchmark — {report['model']} ({report['images']} images, batch {report['batch']})")
    for column in ("measurement", "ours", "reference", "ratio", "goal"):
        table.add_column(column)
    ent = report["entropy2"]
    table.add_row("entropy2 search, per tensor", f"{ent['ours_per_tensor_ms']:.2f} ms",
                  f"modelopt {ent['modelopt_per_tensor_s']:.2f} s ({ent['modelopt_tensors_timed']} tensors)",
                  f"{ent['speedup']:.0f}x faster, same bin {ent['same_bin']}", ">= 100x")
    table.add_row(f"entropy2, all {ent['tensors']} tensors", f"{ent['ours_all_tensors_s']:.3f} s wall",
                  f"{ent['ours_all_tensors_cpu_s']:.3f} s CPU", "", "< 1 s")
    col = report["collection"]
    for mode in ("fine", "trt"):
        row = col[mode]
        table.add_row(f"statistics ({mode} histogram)",
                      f"{row['collect_s']:.2f} s wall, {row['collect_cpu_s']:.2f} s CPU (+{row['result_s']:.2f} s result)",
                      f"plain FP32 ORT {col['plain_s']:.2f} s wall, {col['plain_cpu_s']:.2f} s CPU",
                      f"{row['ratio']:.2f}x wall, {row['cpu_ratio']:.2f}x CPU", "<= 1.3x" if mode == "fine" else "")
    for mode, label in (("fine", "fine (ours)"), ("trt", "TensorRT growing")):
        row = report["order"][mode]
        table.add_row(f"entropy2 moved by order/batch, {label}", f"median {row['median_pct']:.2f} %",
                      f"max {row['max_pct']:.2f} %", f"{row['over_1pct']}/{row['tensors']} tensors > 1 %",
                      "within 1 %" if mode == "fine" else "")
    for row in report.get("int8_latency") or []:
        table.add_row(f"latency batch {row['batch']} (ORT)", f"INT8 {row['int8_ms']:.1f} ms",
                      f"FP32 {row['fp32_ms']:.1f} ms", f"{row['speedup']:.2f}x faster", ">= 2x")
    console = Console(width=150)
    console.print(table)
    console.print(f"CPU: {report['cpu']}; flags: {' '.join(report['cpu_flags']) or 'unknown'}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ent, col, order = report["entropy2"], report["collection"], report["order"]
    axes[0].bar(["ours", "modelopt"], [ent["ours_per_tensor_ms"] / 1e3, ent["modelopt_per_tensor_s"]],
                color=["tab:green", "tab:gray"])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds per tensor (log)")
    axes[0].set_title(f"Entropy2 search: {ent['speedup']:.0f}x faster")
    labels = ["plain FP32", "fine stats", "trt stats"]
    values = [col["plain_s"], col["fine"]["collect_s"], col["trt"]["collect_s"]]
    axes[1].bar(labels, values, color=["tab:gray", "tab:green", "tab:orange"])
    axes[1].set_ylabel(f"seconds for {report['images']} images")
    axes[1].set_title(f"Statistics collection: {col['fine']['ratio']:.2f}x plain inference")
    data = [np.array(order[m]["deltas"]) * 100 for m in ("fine", "trt")]
    axes[2].boxplot(data, showfliers=True)
    axes[2].set_xticks([1, 2], ["fine (ours)", "TensorRT growing"])
    axes[2].set_ylabel("entropy2 amax change, %")
    axes[2].set_title("Order/batch dependence per tensor")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--calib-data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--imgsz", type=int, default=640, help="for models with dynamic H/W")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modelopt-tensors", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (medians)")
    parser.add_argument("--skip-int8", action="store_true", help="skip the FP32 vs INT8 latency section")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vq-calib-bench-") as tmp:
        model = args.model or (BUNDLED_MODEL if BUNDLED_MODEL.is_file() else None)
        if model is None:
            sys.path.insert(0, str(ROOT / "tests" / "vision"))
            from conftest import tiny_detector_onnx  # the tests' code-built YOLOv8-shaped model

            model = tiny_detector_onnx(Path(tmp), dynamic_batch=True)
        info, _ = load_model(model)
        dynamic_hw = info.fixed_hw is None
        hw = resolve_input_hw(info, (args.imgsz, args.imgsz) if dynamic_hw else None)
        calib_dir = args.calib_data or synthetic_images(Path(tmp) / "images", args.images, size=max(hw))
        fixed = info.fixed_batch is not None
        batch = info.fixed_batch or args.batch
        batches = decoded_batches(calib_dir, info.input_name, hw, batch, args.images, fixed)
        single = batches if batch == 1 else decoded_batches(calib_dir, info.input_name, hw, 1, args.images, fixed)
        images = sum(next(iter(b.values())).shape[0] for b in batches)

        collection, fine_stats = collection_rows(model, batches, args.threads, args.rounds)
        report: dict[str, Any] = {"model": str(model), "cpu": cpu_name(), "cpu_flags": cpu_flags(),
                                  "images": images, "batch": batch, "collection": collection,
                                  "entropy2": entropy_rows(fine_stats, args.modelopt_tensors),
                                  "order": order_rows(model, batches, single, args.threads)}
        if not args.skip_int8:
            report["int8_latency"] = int8_latency_rows(Path(model), calib_dir,
                                                       (args.imgsz, args.imgsz) if dynamic_hw else None)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    plot(report, args.out / "calibration.png")
    save_stats(args.out / "calibration_stats.npz", fine_stats)  # the histograms both entropy2 searches saw
    print(f"wrote {args.out / 'calibration.json'} and {args.out / 'calibration.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

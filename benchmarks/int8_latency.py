"""FP32 vs INT8 (``model.int8.ort.onnx``) latency under ONNX Runtime on this CPU, batch 1 and 8.

Both models run side by side in the same process on the same letterboxed calibration images: warm-up, then the
median over repetitions that alternate between the two models (so a busy machine slows both alike); the ratio is
FP32 / INT8 (goal: INT8 >= 2x faster on the CI CPU, which has AVX512-VNNI).

    .venv/bin/python benchmarks/int8_latency.py MODEL.onnx --calib-data DIR [--imgsz 640] [--int8 model.int8.ort.onnx]

Without --int8, the INT8 model is built first with `vision.pipeline.build.build` (ONNX Runtime backend). A model with a
fixed batch dimension is measured at that batch only (e.g. a default Ultralytics export: batch 1).
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

from vision.backends.onnxrt import create_session  # noqa: E402
from vision.config import load_config  # noqa: E402
from vision.data.images import CalibrationSet  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--calib-data", type=Path, default=None)
    parser.add_argument("--int8", type=Path, default=None, help="an existing model.int8.ort.onnx")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="save a bar chart (PNG)")
    args = parser.parse_args(argv)
    imgsz = (args.imgsz, args.imgsz) if args.imgsz else None
    rows = int8_latency_rows(args.model, args.calib_data, int8_model=args.int8, batches=args.batches, imgsz=imgsz,
                             warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    title = f"{args.model.name}: ONNX Runtime CPU, {cpu_name()}, median of {args.repeats}"
    print_table(rows, title)
    print(f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}")
    if args.plot:
        plot(rows, args.plot, title)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

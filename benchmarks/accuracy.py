"""FP32 vs INT8 under ONNX Runtime on the CPU: mAP table with the latency ratio beside it (run on demand).

Defaults reproduce the bundled detector's numbers offline: the val split is regenerated from seed 0 and the
calibration images from seed 1 (vision.data.synthetic), then `vision.pipeline.compare.compare` builds every INT8 variant,
evaluates it and times it in the same run, so FP32 and INT8 latencies are measured side by side.

    .venv/bin/python benchmarks/accuracy.py                      # 200 val images, 64 calibration images
    .venv/bin/python benchmarks/accuracy.py --images 500 --threads 2 --out out/accuracy
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision.config import BUNDLED_MODEL  # noqa: E402
from vision.data.synthetic import generate_calibration_images, generate_dataset  # noqa: E402
from vision.evaluation.bench import cpu_flags  # noqa: E402
from vision.pipeline.compare import CompareOptions, compare  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--data", type=Path, help="image dir (default: regenerate the val split)")
    parser.add_argument("--annotations", type=Path, help="COCO json for --data")
    parser.add_argument("--calib-data", type=Path, help="calibration images (default: 64 generated, seed 1)")
    parser.add_argument("--images", type=int, default=200, help="val images to generate/evaluate")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=20, help="timed inferences per variant")
    parser.add_argument("--budget", type=float, default=0.5, help="accuracy budget of INT8-mixed (mAP points)")
    parser.add_argument("--out", type=Path, default=None, help="keep models and reports here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vq-accuracy-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if args.data is None:
            annotations = generate_dataset(root / "shapes", args.images, seed=0, split="val")
            data = root / "shapes" / "images" / "val"
        else:
            data, annotations = args.data, args.annotations
        calib = args.calib_data or generate_calibration_images(root / "calib", args.calib_images, seed=1)
        generated = time.perf_counter() - start
        result = compare(args.model, calib, data, annotations, args.out or root / "out",
                         CompareOptions(max_images=args.images, max_calib_images=args.calib_images,
                                        accuracy_budget=args.budget, bench_iterations=args.iterations,
                                        threads=args.threads))
    rows = result.table()
    fp32 = rows[0]
    print(f"\n{Path(args.model).name}: {result.images} val images, {result.calib_images} calibration images, "
          f"{result.device}, threads={args.threads or 'auto'}")
    print(f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}; latencies: medians of one interleaved loop over every "
          f"row and searched candidate ({args.iterations} rounds)")
    width = max(len(row["variant"]) for row in rows) + 2
    print(f"{'variant':<{width}}{'runtime':<13}{'mAP50-95':>9}{'mAP50':>8}{'Δ50-95':>8}{'p50 ms':>9}{'×FP32':>7}"
          f"{'float':>7}  front")
    for row in rows:
        ratio = fp32["latency_ms"] / row["latency_ms"] if row["latency_ms"] else float("nan")
        mark = "recommended" if row["recommended"] else "yes" if row["pareto"] else ""
        print(f"{row['variant']:<{width}}{row['runtime']:<13}{row['map50_95']:>9.4f}{row['map50']:>8.4f}"
              f"{row['delta_map50_95']:>+8.2f}{row['latency_ms']:>9.2f}{ratio:>6.2f}×{row['excluded_layers']:>7}  {mark}")
    for runtime in ("onnxruntime", "openvino"):
        search = result.mixed.get(runtime)
        if search:
            print(f"mixed on {runtime}: regions {search['regions'] or 'none'}, Δ {search['delta']:.2f} pts, budget "
                  f"{search['budget']} {'met' if search['met'] else 'NOT met'}, {len(search['candidates']) - 1} "
                  f"candidate(s): " + ", ".join(f"{len(c['regions'])} region(s) {c['delta']:.2f} pts "
                                                 f"{c['latency_ms']:.1f} ms" for c in search["candidates"]))
    print(f"recommended: {result.recommendation['variant']}: {result.recommendation['reason']}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
          + f", data generation {generated:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

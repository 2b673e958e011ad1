"""Where OpenVINO spends an inference: per-layer performance counters, summed by layer type and kernel.

Shows which layers run as INT8 kernels (exec type ending in ``_I8``), which stay float, and the reorders between
layouts. Used to place the OpenVINO Q/DQ layout's Split/MaxPool/Resize quantization (vision.artifacts.qdq_ov).

    .venv/bin/python benchmarks/openvino_layers.py out/yolov8/model.int8.ov.onnx [--precision f32] [--threads 2]
        [--runs 5] [--top 15]

Per-layer times on a busy machine are noisy (a preempted layer looks slow); the kernel names are not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quant_common.errors import QuantError  # noqa: E402
from vision.backends.openvino import PRECISIONS, by_kernel, layer_profile  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--precision", choices=PRECISIONS, default="f32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=15, help="also list the N slowest layers")
    args = parser.parse_args(argv)
    try:
        rows = layer_profile(args.model, args.precision, args.threads, args.runs)
    except QuantError as exc:  # missing/unreadable model, OpenVINO not installed: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model.name}, hint {args.precision}, threads {args.threads or 'all'}, mean of {args.runs}; "
          f"{cpu_name()}, flags: {' '.join(cpu_flags()) or 'unknown'}")
    print(f"{'ms':>9} | {'share':>6} | {'layers':>6} | {'layer type':<16} | kernel")
    for r in by_kernel(rows):
        print(f"{r['ms']:>9.3f} | {100 * r['share']:>5.1f}% | {r['layers']:>6} | {r['type']:<16} | {r['exec_type']}")
    if args.top:
        print(f"\nslowest {args.top} layers")
        for r in sorted(rows, key=lambda r: -r["ms"])[:args.top]:
            print(f"{r['ms']:>9.3f} | {r['type']:<16} | {r['exec_type']:<26} | {r['name']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

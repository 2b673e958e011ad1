"""Where OpenVINO spends an inference: per-layer performance counters, summed by layer type and kernel.

Shows which layers run as INT8 kernels (exec type ending in ``_I8``), which stay float, and the reorders between
layouts. Used to place the OpenVINO Q/DQ layout's Split/MaxPool/Resize quantization (vision.artifacts.qdq_ov).

    .venv/bin/python benchmarks/openvino_layers.py out/yolov8/model.int8.ov.onnx [--precision f32] [--threads 2]
        [--runs 5] [--top 15] [--vs-onnxruntime yolov8n.onnx]

``--vs-onnxruntime FP32.onnx`` also runs that FP32 model in ONNX Runtime, interleaved with the profiled runs, and
compares its latency with the time the profiled model spends in INT8 convolutions alone: when that time is above a
quarter of ONNX Runtime's, nothing but faster convolution kernels makes the model 4x faster than ONNX Runtime FP32.

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
    parser.add_argument("--vs-onnxruntime", type=Path, default=None, metavar="FP32.onnx",
                        help="compare INT8 convolution time with ONNX Runtime FP32 on this model, interleaved")
    args = parser.parse_args(argv)
    if args.vs_onnxruntime is not None:
        try:
            return _versus_onnxruntime(args.model, args.vs_onnxruntime, args.precision, args.threads, args.runs)
        except QuantError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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


def _versus_onnxruntime(model: Path, fp32: Path, precision: str, threads: int | None, runs: int) -> int:
    """Per repetition: one ONNX Runtime FP32 inference, one profiled OpenVINO inference; medians of each."""
    import statistics
    import time

    import numpy as np

    from vision.backends.onnxrt import create_session
    from vision.backends.openvino import compile_model

    session = create_session(fp32, threads)
    compiled = compile_model(model, precision, threads, perf_counters=True)  # type: ignore[arg-type]
    request = compiled.create_infer_request()
    feed = np.random.default_rng(0).random(tuple(compiled.inputs[0].get_shape()), dtype=np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: feed})
    request.infer([feed])
    ort_ms, ov_ms, conv_ms, int8_conv_ms = [], [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: feed})
        ort_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        request.infer([feed])
        ov_ms.append((time.perf_counter() - start) * 1e3)
        executed = [i for i in request.profiling_info if i.status == i.Status.EXECUTED]
        convs = [i for i in executed if i.node_type == "Convolution"]
        conv_ms.append(sum(i.real_time.total_seconds() for i in convs) * 1e3)
        int8_conv_ms.append(sum(i.real_time.total_seconds() for i in convs if i.exec_type.endswith("_I8")) * 1e3)
    ort, ov, conv, int8 = (statistics.median(v) for v in (ort_ms, ov_ms, conv_ms, int8_conv_ms))
    print(f"{model.name} (OpenVINO, hint {precision}) vs {fp32.name} (ONNX Runtime FP32), threads "
          f"{threads or 'all'}, median of {runs} interleaved; {cpu_name()}, flags: {' '.join(cpu_flags()) or 'unknown'}")
    print(f"ONNX Runtime FP32 {ort:.2f} ms | OpenVINO {ov:.2f} ms ({ort / ov:.2f}x) | its convolutions {conv:.2f} ms, "
          f"INT8 ones {int8:.2f} ms ({100 * int8 / ov:.0f} %)")
    print(f"ONNX Runtime FP32 / 4 = {ort / 4:.2f} ms; with everything but the INT8 convolutions free, OpenVINO would "
          f"be at most {ort / int8:.2f}x ONNX Runtime FP32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

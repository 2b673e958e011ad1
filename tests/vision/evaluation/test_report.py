"""compare's report and terminal table: the Pareto chart's labels never overlap, the 80-column table shows every
variant's full name, and long float-layer lists are collapsed by region."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from vision.calibration.stats import TensorStats
from vision.cli.analysis import compare_table
from vision.evaluation.pareto_chart import pareto_figure
from vision.evaluation.report import float_summary, pareto_points, write_reports
from vision.evaluation.results import CompareResult, Variant

HEAD = [f"/model.22/head_{i}" for i in range(19)]
REGION = [f"/model.4/m.0/n{i}" for i in range(26)]


def _result() -> CompareResult:
    """Nine rows as compare writes them, five of them within a fraction of a point and a millisecond or two of each
    other (the crowded corner a chart has to label), plus the candidates a search measured."""
    rows = [("FP32", None, "onnxruntime", 0.9343, 62.0, []), ("INT8-minmax", "minmax", "onnxruntime", 0.9290, 25.3, HEAD),
            ("INT8-entropy2", "entropy2", "onnxruntime", 0.9281, 25.1, HEAD),
            ("INT8-percentile", "percentile", "onnxruntime", 0.9273, 25.4, HEAD),
            ("INT8-mixed", "minmax", "onnxruntime", 0.9302, 26.0, HEAD + REGION),
            ("FP32-openvino", None, "openvino", 0.9341, 55.0, []),
            ("INT8-minmax-openvino", "minmax", "openvino", 0.9314, 16.4, HEAD),
            ("INT8-mixed-openvino", "minmax", "openvino", 0.9314, 16.5, HEAD)]
    variants = []
    for name, calibrator, runtime, score, ms, excluded in rows:
        v = Variant(name, calibrator, f"{name}.onnx", score, score + 0.04, latency_ms=ms, runtime=runtime,
                    excluded=list(excluded), regions=["model.3–model.4"] if excluded == HEAD + REGION else [])
        v.delta_map50_95, v.speedup = 100 * (score - 0.9343), 62.0 / ms
        variants.append(v)
    variants[6].pareto = variants[0].pareto = True
    candidates = [{"regions": [], "float_nodes": 19, "map50_95": 0.9290, "delta": 0.53, "latency_ms": 25.3},
                  {"regions": ["model.3–model.4"], "float_nodes": 45, "map50_95": 0.9302, "delta": 0.41,
                   "latency_ms": 26.0},
                  {"regions": ["model.3–model.4", "model.2"], "float_nodes": 61, "map50_95": 0.9310, "delta": 0.33,
                   "latency_ms": 27.9}]
    mixed = {"base_calibrator": "minmax", "budget": 0.5, "head": HEAD,
             "regions": [{"name": "model.3–model.4", "nodes": REGION, "layers": 7}],
             "onnxruntime": {"met": True, "candidates": candidates}}
    return CompareResult(model="yolov8n.onnx", variants=variants, images=100, calib_images=64,
                         amax={"minmax": {"images": 1.0}}, layer_errors=[], mixed=mixed,
                         recommendation={"variant": "INT8-minmax-openvino", "front": ["FP32", "INT8-minmax-openvino"],
                                         "reason": "the fastest variant within 0.5 points of FP32"},
                         device="onnxruntime + openvino cpu, AMD EPYC (2 logical cores)")


def test_pareto_chart_labels_every_row_without_overlap() -> None:
    result = _result()
    fig = pareto_figure(pareto_points(result), "test", 0.9293)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()  # the Agg canvas the figure was laid out on
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == sorted(v.name for v in result.variants)
    boxes = [t.get_window_extent(renderer) for t in labels]
    frame = ax.get_window_extent(renderer)
    for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes, strict=True), 2):
        assert not box_a.overlaps(box_b), (a.get_text(), b.get_text())
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


@pytest.mark.parametrize("width", [80])
def test_terminal_table_fits_and_names_every_variant_in_full(width: int) -> None:
    result = _result()
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(compare_table(result))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    names = [line.split()[0] for line in lines if line.strip().startswith(("FP32", "INT8"))]
    assert names == [v.name for v in result.variants]  # every name whole, none truncated to another's prefix
    assert "…" not in text and "★" in text


def test_report_collapses_float_layers_by_region(tmp_path: Path) -> None:
    result = _result()
    assert float_summary(result, result.variants[4]) == "head 19, model.3–model.4 26"
    stats = TensorStats(name="images", min=0.0, max=1.0, hist=np.ones(16, np.int64), edges=np.linspace(0, 1, 17))
    write_reports(result, {"images": stats}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "head 19, model.3–model.4 26" in md and REGION[0] not in md
    assert "Recommended: INT8-minmax-openvino" in md and "report_pareto.png" in md
    assert (tmp_path / "report_pareto.png").stat().st_size > 10_000

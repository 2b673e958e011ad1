"""`vision.pipeline.compare` / `vision.evaluation.sensitivity` / `vision.evaluation.report` on a tiny detector (real ORT sessions, real Q/DQ)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import image_batches, synthetic_images, tiny_detector_onnx
from tests.vision.eval_helpers import labelled_set
from vision.pipeline.compare import CompareOptions, compare
from vision.evaluation.sensitivity import (
    LayerError,
    head_nodes,
    layer_errors,
    search_exclusions,
    sqnr_db,
)


def test_sqnr_values() -> None:
    ref = np.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise 0.1 of signal: 20 dB
    assert sqnr_db(ref, ref * 1.01) == pytest.approx(40.0)


def _ranked(n: int) -> list[LayerError]:
    return [LayerError(f"layer{i}", "Conv", f"t{i}", 10.0, float(n - i)) for i in range(n)]


def test_budget_search_stops_at_the_first_prefix_that_meets_it() -> None:
    calls: list[int] = []

    def measure(excluded: list[str]) -> float:
        calls.append(len(excluded))
        return {1: 1.5, 2: 0.9, 3: 0.6, 4: 0.4, 8: 0.1}[len(excluded)]

    search = search_exclusions(_ranked(10), measure, budget=0.5, baseline_delta=2.0)
    assert search.met and search.excluded == ["layer0", "layer1", "layer2", "layer3"]
    assert search.delta == 0.4 and calls == [1, 2, 4, 3]  # 3 (between failing 2 and passing 4) fails
    assert search_exclusions(_ranked(10), measure, budget=0.5, baseline_delta=0.3).excluded == []
    unmet = search_exclusions(_ranked(3), lambda e: 1.0 + 0.1 * len(e), budget=0.5, baseline_delta=2.0)
    assert not unmet.met and unmet.excluded == ["layer0"] and unmet.delta == pytest.approx(1.1)
    with pytest.raises(QuantError, match="negative"):
        search_exclusions(_ranked(2), measure, budget=-1, baseline_delta=1.0)


def test_budget_search_goes_past_32_to_all_layers_then_bisects_to_the_fewest() -> None:
    calls: list[int] = []

    def measure(excluded: list[str]) -> float:
        calls.append(len(excluded))
        return 0.4 if len(excluded) >= 41 else 0.6  # only 41 or more float layers meet 0.5

    search = search_exclusions(_ranked(100), measure, budget=0.5, baseline_delta=2.0)
    assert calls[:8] == [1, 2, 4, 8, 16, 32, 64, 48]  # doubling past 32, then bisecting 32..64
    assert search.met and len(search.excluded) == 41 and search.delta == 0.4
    assert [t["excluded"] for t in search.trials][1:] == calls
    only_all = search_exclusions(_ranked(70), lambda e: 0.4 if len(e) == 70 else 0.9, budget=0.5,
                                 baseline_delta=2.0)
    assert only_all.met and len(only_all.excluded) == 70  # all ranked layers is the last prefix tried


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("compare")
    model = tiny_detector_onnx(root)
    calib = root / "calib"
    synthetic_images(calib, 4)
    images, annotations = labelled_set(root / "val")
    (root / "map.json").write_text(json.dumps({"0": 3, "1": 7, "2": 11}))
    result = compare(model, calib, images, annotations, root / "out",
                     CompareOptions(max_calib_images=4, bench_iterations=2, bench_warmup=1,
                                    class_map=root / "map.json"))
    return root, result


def test_compare_writes_the_table_models_and_reports(compared: tuple[Path, object]) -> None:
    root, result = compared
    out = root / "out"
    assert [row["variant"] for row in result.table()] == ["FP32", "INT8-minmax", "INT8-entropy2",
                                                          "INT8-percentile", "INT8-mixed"]
    for name in ("model.int8.minmax.ort.onnx", "model.int8.entropy2.ort.onnx", "model.int8.percentile.ort.onnx",
                 "model.int8.mixed.ort.onnx", "report.md", "report.html", "compare.json", "report_sqnr.png",
                 "report_histograms.png", "report_map.png", "report_latency.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".compare-staging-*"))
    int8 = onnx.load(str(out / "model.int8.minmax.ort.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "INT8-entropy2" in page
    assert "report_histograms.png" in (out / "report.md").read_text()
    saved = json.loads((out / "compare.json").read_text())
    assert set(saved["amax"]) == {"minmax", "entropy2", "percentile"}
    # minmax is the largest threshold of all three for every tensor
    for tensor, value in saved["amax"]["minmax"].items():
        assert value >= saved["amax"]["entropy2"][tensor] - 1e-6
    assert all(row["latency_ms"] > 0 for row in result.table())
    assert result.calib_images == 4 and result.images == 2


def test_layer_errors_rank_every_conv(compared: tuple[Path, object]) -> None:
    root, result = compared
    ranked = layer_errors(root / "tiny_detector.onnx", root / "out" / "model.int8.minmax.ort.onnx",
                          [{"images": image_batches(1)[0:1]}])
    convs = [n.name for n in onnx.load(str(root / "tiny_detector.onnx")).graph.node if n.op_type in ("Conv", "MatMul")]
    assert sorted(e.node for e in ranked) == sorted(convs)
    assert all(np.isfinite(e.sqnr_db) and e.sqnr_db > 0 for e in ranked)
    assert [e.added_db for e in ranked] == sorted((e.added_db for e in ranked), reverse=True)
    assert result.layer_errors and result.mixed["budget"] == 0.5


def test_compare_refuses_bad_input_before_long_work(tmp_path: Path) -> None:
    with pytest.raises(QuantError, match="model file not found"):
        compare(tmp_path / "absent.onnx", tmp_path, tmp_path, tmp_path / "a.json", tmp_path / "out")


def test_head_nodes_are_the_all_anchor_part_of_any_yolov8_export() -> None:
    model = onnx.load(str(Path(__file__).resolve().parents[3] / "vision" / "assets" / "yolov8n_shapes.onnx"))
    head = set(head_nodes(model))
    assert {"/model.22/Concat", "/model.22/dfl/Softmax", "/model.22/dfl/conv/Conv", "/model.22/Sigmoid"} <= head
    assert not any("cv2" in n or "cv3" in n for n in head)  # the per-level branch convs stay INT8 candidates
    tiny = onnx.load(str(tiny_detector_onnx(Path(tempfile.mkdtemp()))))
    assert "/model.head/Concat" in set(head_nodes(tiny))


def test_a_float_layer_takes_its_fused_activation_along() -> None:
    from vision.evaluation.sensitivity import with_activations

    model = onnx.load(str(Path(__file__).resolve().parents[3] / "vision" / "assets" / "yolov8n_shapes.onnx"))
    kept = with_activations(model, ["/model.9/cv2/conv/Conv", "/model.22/cv3.2/cv3.2.2/Conv"])
    # SiLU = Sigmoid + Mul follows the backbone conv; the class conv feeds a Concat (no activation to take)
    assert kept == ["/model.9/cv2/conv/Conv", "/model.22/cv3.2/cv3.2.2/Conv", "/model.9/cv2/act/Sigmoid",
                    "/model.9/cv2/act/Mul"]

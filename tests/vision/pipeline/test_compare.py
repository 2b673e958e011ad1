"""`vision.pipeline.compare` (with `vision.evaluation.sensitivity` and `vision.evaluation.report`) on a tiny detector
(real ORT sessions, real Q/DQ)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant_common.errors import QuantError, is_importable
from tests.vision.conftest import image_batches, synthetic_images, tiny_detector_onnx
from tests.vision.eval_helpers import labelled_set
from vision.evaluation.sensitivity import layer_errors
from vision.pipeline.compare import CompareOptions, compare


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
    openvino = ["FP32-openvino", f"INT8-{result.mixed['base_calibrator']}-openvino",
                "INT8-mixed-openvino"] if is_importable("openvino") else []
    assert [row["variant"] for row in result.table()] == ["FP32", "INT8-minmax", "INT8-entropy2",
                                                          "INT8-percentile", "INT8-mixed", *openvino]
    if openvino:  # its own layout, published beside the ORT ones; FP32 is the same model in both runtimes
        assert (out / f"model.int8.{result.mixed['base_calibrator']}.ov.onnx").is_file()
        assert (out / "model.int8.mixed.ov.onnx").is_file()
        fp32, fp32_ov = result.variants[0], result.variants[5]
        assert abs(fp32.map50_95 - fp32_ov.map50_95) < 0.01 and "openvino" in (out / "report.md").read_text()
    for name in ("model.int8.minmax.ort.onnx", "model.int8.entropy2.ort.onnx", "model.int8.percentile.ort.onnx",
                 "model.int8.mixed.ort.onnx", "report.md", "report.html", "compare.json", "report_sqnr.png",
                 "report_histograms.png", "report_map.png", "report_latency.png", "report_pareto.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".compare-staging-*"))
    int8 = onnx.load(str(out / "model.int8.minmax.ort.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "INT8-entropy2" in page
    assert "report_histograms.png" in (out / "report.md").read_text()
    saved = json.loads((out / "compare.json").read_text())
    assert set(saved["amax"]) == {"minmax", "entropy2", "percentile"}
    # minmax is the largest threshold of all three for every tensor
    for tensor, value in saved["amax"]["minmax"].items():
        assert value >= saved["amax"]["entropy2"][tensor] - 1e-6
    assert all(row["latency_ms"] > 0 for row in result.table())
    for row in result.table():  # every Δ with its paired interval, which brackets it
        for key, ci in (("delta_map50_95", "delta_map_ci95"), ("delta_map50", "delta_map50_ci95")):
            assert row[ci][0] - 0.01 <= row[key] <= row[ci][1] + 0.01, (row["variant"], key)
    assert saved["variants"][1]["delta_map_ci95"] == result.variants[1].delta_map_ci95
    assert "Δ mAP50-95 (pts)" in (out / "report.md").read_text() and "paired bootstrap" in (out / "report.md").read_text()
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
    assert not list((root / "out").glob(".candidates*")) and not list((root / "out").glob("candidate-*"))


def test_compare_refuses_bad_input_before_long_work(tmp_path: Path) -> None:
    with pytest.raises(QuantError, match="model file not found"):
        compare(tmp_path / "absent.onnx", tmp_path, tmp_path, tmp_path / "a.json", tmp_path / "out")

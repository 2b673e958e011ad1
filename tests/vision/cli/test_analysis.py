"""`vision-quant eval | bench | predict`: JSON contracts, drawn images, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from quant_common.errors import is_importable
from tests.vision.eval_helpers import (
    GT_BOXES,
    GT_CLASSES,
    classifier_onnx,
    labelled_set,
    oracle_onnx,
    raw_output,
    to_network,
)
from vision.cli import analysis as cli_analysis

EXE = Path(sys.executable).with_name("vision-quant")


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    cli_analysis.register(application)
    return application


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli_eval")
    images, annotations = labelled_set(root)
    model = oracle_onnx(root / "oracle.onnx", raw_output(to_network(GT_BOXES), GT_CLASSES, 3))
    return model, images, annotations


def _invoke(app: typer.Typer, *args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_eval_json_and_table_and_plot(app: typer.Typer, labelled: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, images, annotations = labelled
    code, out, _ = _invoke(app, "eval", model, "--data", images, "--annotations", annotations, "--json",
                           "--plot", tmp_path / "ap.png")
    assert code == 0
    result = json.loads(out)
    assert result["map50_95"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert [c["category_id"] for c in result["per_class"]] == [3, 7, 11]
    assert Image.open(tmp_path / "ap.png").size[0] > 100
    code, out, _ = _invoke(app, "eval", model, "--data", images, "--annotations", annotations, "--max-images", 1)
    assert code == 0 and "1.0000" in out and "class3" in out


def test_bench_json(app: typer.Typer, labelled: tuple[Path, Path, Path]) -> None:
    code, out, _ = _invoke(app, "bench", labelled[0], "--warmup", 1, "--iterations", 3, "--threads", 1, "--json",
                           "--backend", "onnxruntime")
    assert code == 0
    result = json.loads(out)
    assert {"p50", "p90", "p99"} <= set(result["latency_ms"]) and result["throughput_ips"] > 0
    assert result["backend"] == "onnxruntime" and result["threads"] == 1


def test_bench_openvino_records_its_precision_hint(app: typer.Typer, labelled: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("openvino")
    code, out, _ = _invoke(app, "bench", labelled[0], "--warmup", 0, "--iterations", 2, "--json",
                           "--backend", "openvino", "--ov-precision", "bf16")
    assert code == 0 and json.loads(out)["backend"] == "openvino[bf16]"
    code, _, err = _invoke(app, "bench", labelled[0], "--backend", "openvino", "--ov-precision", "int4")
    assert code != 0 and "unknown OpenVINO precision 'int4'" in err and "Traceback" not in err


def test_predict_draws_boxes(app: typer.Typer, labelled: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, images, _ = labelled
    source = images / "img0.png"
    code, out, _ = _invoke(app, "predict", model, source, "--save", tmp_path / "pred", "--json")
    assert code == 0
    record = json.loads(out)["images"][0]
    assert len(record["detections"]) == 3
    drawn = Image.open(record["saved"]).convert("RGB")
    original = Image.open(source).convert("RGB")
    assert drawn.size == original.size
    x0, y0, x1, y1 = (int(v) for v in GT_BOXES[0])
    edge = drawn.getpixel(((x0 + x1) // 2, y0))  # on the drawn rectangle's top edge
    assert edge != original.getpixel(((x0 + x1) // 2, y0))


@pytest.mark.parametrize("case", ["missing_images", "not_a_detector", "class_mismatch", "bad_model", "bad_batch",
                                  "compare_bad_calibrator"])
def test_bad_input_is_one_line_and_nonzero(app: typer.Typer, labelled: tuple[Path, Path, Path], tmp_path: Path,
                                           case: str) -> None:
    model, images, annotations = labelled
    args: list[object]
    if case == "missing_images":
        args = ["eval", model, "--data", tmp_path, "--annotations", annotations]
    elif case == "not_a_detector":
        args = ["eval", classifier_onnx(tmp_path / "c.onnx"), "--data", images, "--annotations", annotations]
    elif case == "class_mismatch":
        other = oracle_onnx(tmp_path / "five.onnx", raw_output(to_network(GT_BOXES), GT_CLASSES, 5))
        args = ["eval", other, "--data", images, "--annotations", annotations]
    elif case == "bad_model":
        (tmp_path / "broken.onnx").write_bytes(b"\x08\x01garbage")
        args = ["predict", tmp_path / "broken.onnx", images / "img0.png"]
    elif case == "bad_batch":
        args = ["bench", model, "--batch", 2]
    else:
        args = ["compare", model, "--calib-data", images, "--data", images, "--annotations", annotations,
                "--calibrators", "minmax,kl", "--out", tmp_path / "cmp", "--bench-iterations", 1]
    code, out, err = _invoke(app, *args)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err + out


@pytest.mark.skipif(is_importable("tensorrt"), reason="checks the message shown when TensorRT is absent")
def test_engine_without_tensorrt_through_the_installed_command(labelled: tuple[Path, Path, Path],
                                                               tmp_path: Path) -> None:
    _, images, annotations = labelled
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    command = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "vision.cli"]
    proc = subprocess.run([*command, "eval", str(engine), "--data", str(images), "--annotations", str(annotations)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "tensorrt" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_against_a_reference_prints_the_delta_with_its_interval(app: typer.Typer,
                                                                     labelled: tuple[Path, Path, Path],
                                                                     tmp_path: Path) -> None:
    model, images, annotations = labelled
    shifted_boxes = to_network(GT_BOXES).copy()
    shifted_boxes[:, [0, 2]] += 0.15 * (shifted_boxes[:, 2] - shifted_boxes[:, 0])[:, None]
    shifted = oracle_onnx(tmp_path / "shifted.onnx", raw_output(shifted_boxes, GT_CLASSES, 3))
    args = ("eval", shifted, "--reference", model, "--data", images, "--annotations", annotations,
            "--resamples", 50)
    code, out, _ = _invoke(app, *args, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["reference"]["map50_95"] == pytest.approx(1.0)
    assert result["delta_map50_95"] == pytest.approx(100 * (result["map50_95"] - 1.0), abs=1e-3)
    lo, hi = result["delta_map_ci95"]
    assert lo <= result["delta_map50_95"] <= hi and result["delta_map50_ci95"] == [0.0, 0.0]
    assert result["map50_95_ci95"][0] <= result["map50_95"] <= result["map50_95_ci95"][1]
    assert result["bootstrap"] == {"units": "images", "images": 2, "resamples": 50, "seed": 0}
    code, text, _ = _invoke(app, *args)
    assert code == 0 and "Δ vs reference (mAP points): mAP50-95 " in text and "paired" in text

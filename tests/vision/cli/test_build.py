"""`vision-quant build`: bad input gives one clear line, a non-zero exit, no traceback and nothing in --out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from vision.cli import build as cli_build

EXE = Path(sys.executable).with_name("vision-quant")


@pytest.fixture(scope="module")
def app():
    application = typer.Typer()
    # a callback keeps `build` a subcommand (a lone command would become the root command)
    application.callback()(lambda: None)
    cli_build.register(application)
    return application


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_detector_onnx(root, dynamic_batch=True)
    images = root / "images"
    synthetic_images(images, 6)
    return root, model, images


def _invoke(app, args):
    result = CliRunner().invoke(app, ["build", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def _two_input_model(path):
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    out = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "two", [x, y], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _token_model(path):
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 16])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, [1, 16])
    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["y"])], "tok", [x], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def bad_cases(root: Path, model: Path, images: Path):
    corrupt = root / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    truncated = root / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    imageless = root / "imageless"
    imageless.mkdir(exist_ok=True)
    (imageless / "labels.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    blocker = root / "a-file"
    blocker.write_text("x")
    return {
        "missing model": ([root / "nope.onnx", "--calib-data", images], "model file not found"),
        "corrupt model": ([corrupt, "--calib-data", images], "not a readable ONNX model"),
        "truncated model": ([truncated, "--calib-data", images], "ONNX model"),
        "several inputs": ([_two_input_model(root / "two.onnx"), "--calib-data", images], "has 2 inputs"),
        "no image input": ([_token_model(root / "tok.onnx"), "--calib-data", images], "not an image tensor"),
        "empty calibration dir": ([model, "--calib-data", empty, "--imgsz", 64], "no images found"),
        "image-less calibration dir": ([model, "--calib-data", imageless, "--imgsz", 64], "no images found"),
        "unknown calibrator": ([model, "--calib-data", images, "--calibrator", "kl"], "calibrator"),
        "unwritable out": ([model, "--calib-data", images, "--imgsz", 64, "--out-parent-is-file"], "directory"),
        # regression (issue 8 item 10b): was a negative-size tensor from the engine run
        "batch above max batch": ([model, "--calib-data", images, "--imgsz", 64, "--batch", 16, "--max-batch", 4],
                                  "--batch 16 is larger than --max-batch 4"),
    }


@pytest.mark.parametrize("case", ["missing model", "corrupt model", "truncated model", "several inputs",
                                  "no image input", "empty calibration dir", "image-less calibration dir",
                                  "unknown calibrator", "unwritable out", "batch above max batch"])
def test_bad_input_is_one_line_and_leaves_nothing(app, assets, tmp_path, case):
    root, model, images = assets
    args, expected = bad_cases(root, model, images)[case]
    out = tmp_path / "out"
    if "--out-parent-is-file" in args:
        args = [a for a in args if a != "--out-parent-is-file"]
        out = root / "a-file" / "out"
    code, stdout, stderr = _invoke(app, [*args, "--out", out])
    lines = stderr.strip().splitlines()
    assert code != 0, stdout
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists() or not any(out.iterdir())


def test_cache_from_another_model_is_refused_without_force(app, assets, tmp_path):
    root, model, images = assets
    out = tmp_path / "out"
    code, _, stderr = _invoke(app, [model, "--calib-data", images, "--imgsz", 64, "--out", out,
                                    "--json"])
    assert code == 0, stderr
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    other = tiny_detector_onnx(root, dynamic_batch=True, seed=7, name="other.onnx")
    code, _, stderr = _invoke(app, [other, "--calib-data", images, "--imgsz", 64, "--out", out])
    assert code != 0 and len(stderr.strip().splitlines()) == 1 and "--force" in stderr, stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    code, stdout, stderr = _invoke(app, [other, "--calib-data", images, "--imgsz", 64, "--out", out, "--force",
                                         "--json"])
    assert code == 0, stderr
    assert json.loads(stdout)["cache_reused"] is False


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([str(EXE), "build", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "model file not found" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_accuracy_budget_without_labelled_data_is_one_line(app, assets, tmp_path):
    root, model, images = assets
    code, stdout, stderr = _invoke(app, [model, "--calib-data", images, "--accuracy-budget", 0.5,
                                         "--annotations", root / "missing.json", "--out", tmp_path / "out"])
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "--accuracy-budget needs a labelled set" in lines[0], stderr
    assert not (tmp_path / "out").exists()


def test_calibration_images_actually_used_are_reported(app, assets, tmp_path):
    """An unreadable file and a seeded subset: the summary and --json say how many images calibration consumed."""
    root, model, images = assets
    calib = tmp_path / "calib"
    calib.mkdir()
    for path in sorted(images.iterdir()):
        (calib / path.name).write_bytes(path.read_bytes())
    (calib / "broken.png").write_bytes(b"not a png")
    code, stdout, stderr = _invoke(app, [model, "--calib-data", calib, "--imgsz", 64, "--out", tmp_path / "a",
                                         "--json"])
    assert code == 0, stderr
    counts = json.loads(stdout)["calibration_images"]
    assert counts == {"found": 7, "max_images": 512, "selected": 7, "used": 6, "unreadable": 1, "listed_missing": 0}
    code, stdout, stderr = _invoke(app, [model, "--calib-data", images, "--imgsz", 64, "--out", tmp_path / "b",
                                         "--max-calib-images", 4, "--calib-stability", 3])
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "calibration images: 4 used of 4 selected from 6 found (seeded subset, --max-calib-images 4)" in text
    assert "scale stability: " in text and "seeded half-subsets of" in text

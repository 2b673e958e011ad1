"""TensorRT builder flags, calibrators, trtexec lines and cache headers against the TensorRT fact table
(vision/backends/upstream/tensorrt.yaml), version by version. Cases are generated from the table's rows.

No TensorRT module is faked: the version-dependent decisions are pure functions of a version string, and the code
calling TensorRT is type-checked against tensorrt-stubs (tests/test_typecheck.py).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from vision.artifacts.cache import ALGORITHMS, make_header, trt_version_code
from vision.artifacts.trtexec import options_used, trtexec_commands
from vision.backends.fp16_onnx import write_fp16_onnx
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.select import DEFAULT_TRT_VERSION, OnnxruntimeBuild
from vision.backends.trt import builder_flags, choose_int8_mode, needs_fp16_onnx
from vision.backends.upstream import tensorrt_facts
from vision.config import load_config
from vision.model import inspect_model
from vision.pipeline.build import build

FACTS = tensorrt_facts()
VERSIONS = [row.min for row in FACTS.versions]  # one version inside each row's range
PRECISIONS = [("fp32", "implicit"), ("fp16", "implicit"), ("int8", "implicit"), ("int8", "explicit")]


def test_every_row_cites_a_tag():
    rows = [*FACTS.versions, *FACTS.builder_flags, *FACTS.network_flags, *FACTS.calibrators,
            *FACTS.trtexec_options, *FACTS.cache_header]
    for row in rows:
        assert row.source.repo == "NVIDIA/TensorRT" and row.source.path, row
        assert row.source.tag or row.source.commit, row
    names = {r.name for r in FACTS.versions}
    for group in (FACTS.builder_flags, FACTS.network_flags, FACTS.calibrators, FACTS.trtexec_options):
        assert {r.version for r in group} == names, "every fact kind is read for every version"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("precision", "mode"), PRECISIONS)
@pytest.mark.parametrize("float_layers", [False, True])
def test_builder_flags_exist_in_version(version, precision, mode, float_layers):
    if precision == "int8":
        try:
            mode = choose_int8_mode(version, mode)
        except QuantError:
            return  # refused with one line: checked below
    for name in builder_flags(version, precision, mode, float_layers):
        assert FACTS.builder_flag(version, name), f"BuilderFlag.{name} does not exist in TensorRT {version}"
    if precision == "fp16" and needs_fp16_onnx(version):
        assert FACTS.strongly_typed(version), "FP16 without the flag needs a strongly typed network"


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_mode_follows_calibrators_and_strong_typing(version):
    mode = choose_int8_mode(version)
    assert mode == ("implicit" if FACTS.calibrator_classes(version) else "explicit")
    if not FACTS.calibrator_classes(version):
        with pytest.raises(QuantError, match="removed implicit INT8"):
            choose_int8_mode(version, "implicit")
    if not FACTS.strongly_typed(version):
        with pytest.raises(QuantError, match="strongly typed"):
            choose_int8_mode(version, "explicit")


def test_tensorrt_11_precisions():
    """Regression (issue 8 item 4): on 11.x `--precision fp16` set BuilderFlag.FP16 (AttributeError there)."""
    assert builder_flags("11.0.0", "fp16", "implicit", False) == ()
    assert needs_fp16_onnx("11.0.0") and not needs_fp16_onnx("10.13.0")
    assert builder_flags("10.13.0", "fp16", "implicit", False) == ("FP16",)
    assert choose_int8_mode("11.1.0") == "explicit"
    assert builder_flags("11.0.0", "int8", "explicit", True) == ()


@pytest.mark.parametrize("version", VERSIONS)
def test_trtexec_lines_use_only_parsed_options(version, tmp_path):
    path = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    info = inspect_model(onnx.load(str(path)), path)
    lines = trtexec_commands(info, (64, 64), 8, "calibration.cache", "model.int8.onnx", trt_version=version,
                             fp16_name="model.fp16.onnx")
    for key, line in lines.items():
        for option in options_used(line):
            assert FACTS.trtexec_parses(version, option), f"{key}: trtexec {version} does not parse {option}"
    assert "fp32" in lines and "fp16" in lines  # fp16 by --fp16, or by the FP16 ONNX where --fp16 is gone
    assert ("int8_cache" in lines) == bool(FACTS.calibrator_classes(version))
    assert ("int8_qdq" in lines) == FACTS.trtexec_parses(version, "--stronglyTyped")


def test_trtexec_lines_for_tensorrt_11(tmp_path):
    """Regression (issue 8 item 4): TensorRT 11's trtexec rejects --fp16/--int8/--calib ("Unknown option")."""
    path = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    info = inspect_model(onnx.load(str(path)), path)
    lines = trtexec_commands(info, (64, 64), 8, "calibration.cache", "model.int8.onnx", trt_version="11.0.0")
    assert set(lines) == {"fp32", "int8_qdq"}  # no FP16 ONNX published: no fp16 line
    assert not any(opt in line for line in lines.values() for opt in ("--fp16", "--int8", "--calib", "--best"))


def test_cache_header_codes_follow_table():
    for row in FACTS.cache_header:
        for major in row.majors:
            if major < 11:
                assert trt_version_code(f"{major}.2.1") == major * row.major_multiplier + 201
    for cal in FACTS.calibrators:
        assert cal.algorithm in ALGORITHMS
    assert make_header("10.13.0", "MinMaxCalibration") == "TRT-101300-MinMaxCalibration"


def test_cache_header_version_on_tensorrt_11():
    """Regression (issue 8 item 4): a TensorRT 11 target aborted ("TensorRT 11.0.0 has no calibration caches")."""
    backend = OnnxruntimeBuild()
    assert backend.target_version("11.0.0") == "11.0.0"
    assert backend.cache_header_version("11.0.0") == DEFAULT_TRT_VERSION == "10.13.0"
    assert backend.cache_header_version("8.6.1") == "8.6.1" and backend.cache_header_version("8.5.3") == "8.5.3"


def test_build_targeting_tensorrt_11(tmp_path):
    """Regression (issue 8 item 4): `vision-quant build --trt-version 11.0` stopped at the cache header."""
    model = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    images = tmp_path / "images"
    synthetic_images(images, 4)
    cfg = load_config(model=model, calib_data=images, out=tmp_path / "out", imgsz=64, batch=2, backend="onnxruntime",
                      trt_version="11.0", agreement_images=0)
    build(cfg)
    manifest = json.loads((cfg.out / "build.json").read_text())
    assert manifest["tensorrt_target"]["version"] == "11.0"
    assert (cfg.out / "calibration.cache").read_text().startswith("TRT-101300-")
    assert set(manifest["trtexec"]) == {"fp32", "int8_qdq"}


def test_fp16_onnx_runs_and_agrees(tmp_path):
    model = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    fp16 = write_fp16_onnx(model, tmp_path / "model.fp16.onnx")
    converted = onnx.load(str(fp16))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in converted.graph.initializer)
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with OnnxrtRunner(model) as ref, OnnxrtRunner(fp16) as half:
        name = ref.input_specs()[0].name
        a, b = ref.infer({name: x}), half.infer({name: x})
    for key in a:
        assert b[key].dtype == np.float32  # graph I/O stays FP32
        assert np.allclose(a[key], b[key], rtol=2e-2, atol=2e-2 * float(np.abs(a[key]).max()))

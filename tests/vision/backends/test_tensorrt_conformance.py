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
from vision.artifacts.qdq_trt import trt_float_dtype
from vision.artifacts.trtexec import options_used, trtexec_lines
from vision.backends.fp16_onnx import write_fp16_onnx
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.select import DEFAULT_TRT_VERSION, OnnxruntimeBuild
from vision.backends.trt import builder_flags, choose_int8_mode, needs_fp16_onnx, version_tuple
from vision.backends.upstream import tensorrt_facts
from vision.config import load_config
from vision.model import inspect_model
from vision.pipeline.build import build

FACTS = tensorrt_facts()
VERSIONS = [row.min for row in FACTS.versions]  # one version inside each row's range
PRECISIONS = [("fp32", "implicit"), ("fp16", "implicit"), ("int8", "implicit"), ("int8", "explicit")]


def test_every_row_cites_a_tag():
    rows = [*FACTS.versions, *FACTS.builder_flags, *FACTS.network_flags, *FACTS.calibrators,
            *FACTS.trtexec_options, *FACTS.cache_header, *FACTS.engine_io_dtypes, *FACTS.nptype]
    for row in rows:
        assert row.source.repo == "NVIDIA/TensorRT" and row.source.path, row
        # a tag read in the source tree, or NVIDIA's versioned documentation where the tree could not be read
        assert row.source.tag or row.source.commit or (row.source.url and not row.source.pinned), row
    from_source = {r.name for r in FACTS.versions if r.source.tag}
    for group in (FACTS.builder_flags, FACTS.network_flags, FACTS.calibrators, FACTS.trtexec_options):
        assert {r.version for r in group} >= from_source, "every fact kind is read for every tag"
    documented = {r.name for r in FACTS.versions} - from_source
    for group in (FACTS.builder_flags, FACTS.calibrators, FACTS.trtexec_options):
        assert {r.version for r in group} >= documented


def test_table_reaches_the_versions_pypi_serves():
    """Issue 21 item 6: TensorRT 10.14-10.16 (tags read) and 11.2-11.4 (PyPI serves 11.4) had no rows."""
    for version in ("10.14.1", "10.15.1", "10.16.0", "11.2.1", "11.3.0", "11.4.1"):
        assert FACTS.row_name(version) == ".".join(version.split(".")[:2])
    assert FACTS.implicit_int8("10.16.0") and not FACTS.implicit_int8("11.4.1")
    assert choose_int8_mode("11.4.1") == "explicit" and needs_fp16_onnx("11.4.1")
    # ranges do not overlap and leave no gap
    rows = sorted(FACTS.versions, key=lambda r: version_tuple(r.min))
    assert all(a.max == b.min for a, b in zip(rows, rows[1:], strict=False))


def test_cache_header_rows_cite_the_header_defining_the_version_code():
    """Issue 21 item 6: the 10.x row cited NvInferVersion.h; NV_TENSORRT_VERSION is defined in NvInferRuntimeBase.h."""
    assert {row.source.path for row in FACTS.cache_header} == {"include/NvInferRuntimeBase.h"}


def test_engine_io_dtypes_are_tensorrt_members_and_torch_types():
    """Issue 21 item 6: bf16/fp8 engine I/O (tensorrt.nptype raises for them) had no mapping."""
    import re

    import torch

    stubs = next(p for p in map(__import__("pathlib").Path, __import__("site").getsitepackages())
                 if (p / "tensorrt_bindings" / "tensorrt.pyi").is_file()) / "tensorrt_bindings" / "tensorrt.pyi"
    text = stubs.read_text(encoding="utf-8")
    members = set(re.findall(r"^    (\w+): typing.ClassVar\[DataType\]", text, re.M))
    (numpy_less,) = FACTS.nptype
    for row in FACTS.engine_io_dtypes:
        assert row.name in members, row.name
        assert isinstance(getattr(torch, row.torch), torch.dtype)
        assert (row.numpy is None) == (row.name in numpy_less.numpy_less)
    assert {"BF16", "FP8"} <= {r.name for r in FACTS.engine_io_dtypes}
    with pytest.raises(QuantError, match="cannot map"):
        FACTS.io_dtype("FP4")


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
    plan = trtexec_lines(info, (64, 64), 8, onnx_name="model.onnx", cache_name="calibration.trtexec.cache",
                         qdq_name="model.int8.onnx", trt_version=version, fp16_name="model.fp16.onnx",
                         float_layers=["/model.head/Concat", "/model.2/Conv"])
    lines = plan.lines
    for key, line in lines.items():
        for option in options_used(line.command):
            assert FACTS.trtexec_parses(version, option), f"{key}: trtexec {version} does not parse {option}"
    assert "fp32" in lines and "fp16" in lines  # fp16 by --fp16, or by the FP16 ONNX where --fp16 is gone
    assert ("int8_cache" in lines) == bool(FACTS.calibrator_classes(version))
    assert ("int8_qdq" in lines) == FACTS.strongly_typed(version)
    # --stronglyTyped where strong typing must be asked for (10.x), never where it is the only kind (11.x)
    assert ("--stronglyTyped" in lines.get("int8_qdq", lines["fp32"]).command) == FACTS.strong_typing_flag(version)
    engines = [line.engine for line in lines.values()]
    assert len(set(engines)) == len(engines), "two lines would write the same engine"


@pytest.mark.parametrize("version", [v for v in VERSIONS if FACTS.calibrator_classes(v)])
def test_trtexec_int8_line_keeps_the_float_layers_in_fp32(version, tmp_path):
    """Issue 21 item 4: the cache line let trtexec run the head in INT8, while our own engine build keeps it FP32.
    The constraints are parsed the way trtexec does (samples/common/sampleOptions.cpp getLayerPrecisions: entries
    split on ',', the name before the last ':')."""
    import shlex

    path = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    info = inspect_model(onnx.load(str(path)), path)
    names = ["/model.head/Concat", "odd:name/with:colons"]
    line = trtexec_lines(info, (64, 64), 8, onnx_name="model.onnx", cache_name="c.cache", trt_version=version,
                         float_layers=names).lines["int8_cache"]
    args = dict(part.split("=", 1) for part in shlex.split(line.command) if "=" in part)
    assert args["--precisionConstraints"] == "obey"
    for option in ("--layerPrecisions", "--layerOutputTypes"):
        parsed = {entry.rsplit(":", 1)[0]: entry.rsplit(":", 1)[1] for entry in args[option].split(",")}
        assert parsed == dict.fromkeys(names, "fp32")
    assert line.float_layers == 2
    # a name trtexec cannot express: no line rather than one that quietly quantizes the head
    plan = trtexec_lines(info, (64, 64), 8, onnx_name="model.onnx", cache_name="c.cache", trt_version=version,
                         float_layers=["a,b"])
    assert "int8_cache" not in plan.lines and "cannot be named" in plan.notes[-1]


@pytest.mark.parametrize("version", VERSIONS)
def test_trt_layout_float_parts_follow_the_target(version):
    """Issue 21 item 2: FP16 for targets that build the Q/DQ model strongly typed (TensorRT >= 10)."""
    expected = "fp16" if FACTS.strongly_typed(version) else "fp32"
    assert trt_float_dtype("auto", version) == expected
    assert trt_float_dtype("fp32", version) == "fp32" and trt_float_dtype("auto", version, half=True) == "fp16"


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
    assert set(manifest["trtexec"]) == {"tensorrt", "fp32", "int8_qdq"}


def test_fp16_onnx_runs_and_agrees(tmp_path):
    model = tiny_detector_onnx(tmp_path, dynamic_batch=True)
    proto = onnx.load(str(model))
    proto.metadata_props.add(key="names", value="{0: 'a'}")
    onnx.save(proto, model)
    fp16 = write_fp16_onnx(model, tmp_path / "model.fp16.onnx")
    converted = onnx.load(str(fp16))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in converted.graph.initializer)
    assert {p.key: p.value for p in converted.metadata_props}["names"] == "{0: 'a'}"  # issue 21 item 7
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with OnnxrtRunner(model) as ref, OnnxrtRunner(fp16) as half:
        name = ref.input_specs()[0].name
        a, b = ref.infer({name: x}), half.infer({name: x})
    for key in a:
        assert b[key].dtype == np.float32  # graph I/O stays FP32
        assert np.allclose(a[key], b[key], rtol=2e-2, atol=2e-2 * float(np.abs(a[key]).max()))

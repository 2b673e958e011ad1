"""TensorRT calibration cache: header codes, bit-exact round trips (ours and modelopt's importer), malformed files,
and the reuse decision."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import modelopt_function
from vision.artifacts.cache import (
    CacheProvenance,
    CalibrationCache,
    amax_to_scale,
    check_reusable,
    data_fingerprint,
    make_header,
    parse_cache,
    read_cache,
    serialize_cache,
    sidecar_path,
    trt_version_code,
    write_cache,
)

# Lines of a real TensorRT 8.6 cache of a YOLOv8 export (ultralytics/ultralytics#14121).
REAL_CACHE = b"TRT-8601-EntropyCalibration2\nimages: 3b66eddc\n168: 3dc6cf6e\n169: 3c010a14\n"


@pytest.mark.parametrize(("version", "code"), [("8.6.1", 8601), ("8.6", 8600), ("8.5.3", 8503), ("7.0.0", 7000),
                                               ("10.13.0", 101300), ("10.13", 101300), ("10.0.1", 100001),
                                               ("10.13.3.9", 101303)])
def test_version_codes(version: str, code: int) -> None:
    assert trt_version_code(version) == code
    assert make_header(version, "MinMaxCalibration") == f"TRT-{code}-MinMaxCalibration"


@pytest.mark.parametrize("version", ["", "ten", "10.x", "8.6.1.2.3", "11.0", "4.0", "8.10.0", "10.100"])
def test_bad_versions_are_one_line_errors(version: str) -> None:
    with pytest.raises(QuantError) as info:
        trt_version_code(version)
    assert "\n" not in str(info.value) and "version" in str(info.value).lower()


def test_unknown_algorithm() -> None:
    with pytest.raises(QuantError, match="EntropyCalibration2"):
        make_header("10.13", "KL")


def test_scales_are_float32_amax_over_127() -> None:
    assert amax_to_scale(127.0) == 1.0
    assert amax_to_scale(1.0) == float(np.float32(1.0) / np.float32(127.0))
    assert amax_to_scale(0.0) > 0  # a tensor that was always 0 still gets a usable scale
    with pytest.raises(QuantError):
        amax_to_scale(float("nan"))


def test_real_cache_round_trips_byte_for_byte() -> None:
    cache = parse_cache(REAL_CACHE)
    assert cache.trt_version == "8.6.1" and cache.version_code == 8601
    assert cache.algorithm == "EntropyCalibration2"
    assert cache.scales["169"] == struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert serialize_cache(cache) == REAL_CACHE


def test_write_read_and_modelopt_importer_agree_bit_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scales = {f"/model.{i}/act/Mul_output_0": amax_to_scale(float(a)) for i, a in enumerate(rng.lognormal(0, 3, 50))}
    scales["images"] = amax_to_scale(1.0)
    cache = CalibrationCache(make_header("10.13", "EntropyCalibration2"), scales)
    path = write_cache(tmp_path / "calibration.cache", cache)
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.cache"]  # nothing staged left behind
    back = read_cache(path)
    assert back.header == "TRT-101300-EntropyCalibration2" and back.trt_version == "10.13.0"
    assert {k: struct.pack(">f", v) for k, v in back.scales.items()} == \
        {k: struct.pack(">f", v) for k, v in scales.items()}
    importer = modelopt_function("onnx/quantization/calib_utils.py", "import_scales_from_calib_cache",
                                 {"struct": struct, "logger": logging.getLogger("modelopt-test")})
    imported = importer(str(path))
    assert imported == {f"{name}_scale": value for name, value in scales.items()}


@pytest.mark.parametrize(("data", "message"), [
    (b"", "line 1"),
    (b"TRT-8601\nimages: 3b66eddc\n", "line 1"),
    (b"TRT-8601-EntropyCalibration2\nimages 3b66eddc\n", "line 2"),
    (b"TRT-8601-EntropyCalibration2\nimages: 3b66eddc\nconv: 3b66ed\n", "line 3"),
    (b"TRT-8601-EntropyCalibration2\nimages: 3b66eddc\nimages: 3b66eddc\n", "twice"),
    (b"\xff\xfe\x00garbage", "not text"),
])
def test_malformed_caches_name_the_line(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.cache"
    path.write_bytes(data)
    with pytest.raises(QuantError, match=message) as info:
        read_cache(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_cache_and_unwritable_names(tmp_path: Path) -> None:
    with pytest.raises(QuantError, match="not found"):
        read_cache(tmp_path / "absent.cache")
    with pytest.raises(QuantError, match="cannot be written"):
        serialize_cache(CalibrationCache("TRT-101300-MinMaxCalibration", {"a: b": 1.0}))


TENSORS = ["images", "/model.0/conv/Conv_output_0", "output0"]


def _provenance(**changes: object) -> CacheProvenance:
    fields: dict[str, object] = {"model_sha256": "aa" * 32, "data_fingerprint": "bb" * 32, "calibrator": "entropy2",
                                 "options": {"histogram": "fine", "num_bins": 2048}, "trt_version": "10.13"}
    fields.update(changes)
    return CacheProvenance(**fields)  # type: ignore[arg-type]


def _write(tmp_path: Path, provenance: CacheProvenance | None, header: str = "TRT-101300-EntropyCalibration2",
           tensors: list[str] = TENSORS) -> Path:
    cache = CalibrationCache(header, {name: amax_to_scale(1.0 + i) for i, name in enumerate(tensors)})
    return write_cache(tmp_path / "calibration.cache", cache, provenance=provenance)


def test_reuse_when_everything_matches(tmp_path: Path) -> None:
    assert check_reusable(tmp_path / "calibration.cache", _provenance(), TENSORS, force=False) is None
    path = _write(tmp_path, _provenance())
    assert sidecar_path(path).is_file()
    reused = check_reusable(path, _provenance(), TENSORS, force=False)
    assert reused is not None and list(reused.scales) == TENSORS


@pytest.mark.parametrize(("change", "label"), [
    ({"model_sha256": "cc" * 32}, "another model"),
    ({"data_fingerprint": "dd" * 32}, "another calibration data"),
    ({"calibrator": "minmax"}, "another calibrator"),
    ({"trt_version": "8.6"}, "another TensorRT version"),
    ({"options": {"histogram": "trt", "num_bins": 2048}}, "another calibration options"),
])
def test_mismatched_cache_is_refused_unless_forced(tmp_path: Path, change: dict[str, object], label: str) -> None:
    path = _write(tmp_path, _provenance())
    with pytest.raises(QuantError, match=label) as info:
        check_reusable(path, _provenance(**change), TENSORS, force=False)
    assert "--force" in str(info.value) and "--calib-cache" in str(info.value)
    assert check_reusable(path, _provenance(**change), TENSORS, force=True) is None


def test_foreign_cache_without_sidecar_is_judged_by_header_and_tensors(tmp_path: Path) -> None:
    path = _write(tmp_path, None, tensors=[*TENSORS, "(Unnamed Layer* 5) [Constant]_output"])
    assert not sidecar_path(path).exists()
    assert check_reusable(path, _provenance(), TENSORS, force=False) is not None  # extra TensorRT names are fine
    with pytest.raises(QuantError, match="header TRT-101300-EntropyCalibration2"):
        check_reusable(path, _provenance(calibrator="minmax"), TENSORS, force=False)
    with pytest.raises(QuantError, match="TensorRT version"):
        check_reusable(path, _provenance(trt_version="8.6.1"), TENSORS, force=False)
    with pytest.raises(QuantError, match="another model .1 of 4 tensors missing"):
        check_reusable(path, _provenance(), [*TENSORS, "other"], force=False)


def test_corrupt_cache_is_refused_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "calibration.cache"
    path.write_bytes(b"TRT-101300-EntropyCalibration2\nimages: zz\n")
    with pytest.raises(QuantError, match="line 2"):
        check_reusable(path, _provenance(), TENSORS, force=False)
    assert check_reusable(path, _provenance(), TENSORS, force=True) is None


def test_rewriting_without_provenance_drops_the_stale_sidecar(tmp_path: Path) -> None:
    path = _write(tmp_path, _provenance())
    _write(tmp_path, None)
    assert not sidecar_path(path).exists()


def test_data_fingerprint_follows_content_not_names_or_order(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "renamed.png"
    a.write_bytes(b"first image")
    b.write_bytes(b"second image")
    c.parent.mkdir()
    c.write_bytes(b"first image")
    options = {"imgsz": [640, 640]}
    base = data_fingerprint([a, b], options)
    assert data_fingerprint([b, a], options) == base
    assert data_fingerprint([b, c], options) == base
    assert data_fingerprint([a, b], {"imgsz": [320, 320]}) != base
    trt = {"histogram": "trt"}
    assert data_fingerprint([a, b], trt) != data_fingerprint([b, a], trt)  # TensorRT's histogram depends on order
    b.write_bytes(b"second image, edited")
    assert data_fingerprint([a, b], options) != base
    with pytest.raises(QuantError, match="cannot read"):
        data_fingerprint([tmp_path / "missing.png"], options)

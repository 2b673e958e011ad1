"""TensorRT calibration caches: write, read, validate, and decide whether an existing one may be reused.

Format (TensorRT 7–10, trtexec ``--calib``, ONNX Runtime's TensorRT EP, ``modelopt.onnx`` ``calibration_cache_path``):
first line ``TRT-<version code>-<Algorithm>``, then one ``<tensor>: <8 hex digits>`` line per tensor, the big-endian
IEEE-754 bits of the float32 scale (dynamic range = ±127 × scale). TensorRT silently ignores a cache whose header
does not match its version and calibrator (NVIDIA/TensorRT#1378); we refuse a mismatch loudly instead.

The header names one exact TensorRT version and one calibrator; the scales depend on neither, so a cache can be
re-labelled for another TensorRT or for trtexec's calibrator (``retarget``) without recalibrating.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quant_common.atomic import atomic_write_bytes, atomic_write_json
from quant_common.errors import QuantError
from quant_common.manifest import sha256_file
from vision.backends.upstream import tensorrt_facts
from vision.calibration.calibrators import CALIBRATORS

ALGORITHMS = ("EntropyCalibration2", "MinMaxCalibration", "EntropyCalibration", "LegacyCalibration")
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_LINE = re.compile(r"^(.+): ?([0-9A-Fa-f]{8})$")
# The smallest scale written: a tensor that was always 0 still gets a usable, non-zero Q/DQ scale.
_MIN_SCALE = float(np.finfo(np.float32).tiny)


def trt_version_code(version: str) -> int:
    """TensorRT's version number in cache headers: ``"8.6.1"`` → 8601, ``"10.13.0"`` → 101300.

    8.x and older: major*1000 + minor*100 + patch; 10.x: major*10000 + minor*100 + patch (NV_TENSORRT_VERSION,
    rows of ``vision/backends/upstream/tensorrt.yaml``). A fourth (build) part is ignored. TensorRT 11 removed
    implicit calibration, so it has no calibration cache.
    """
    parts = str(version).strip().split(".")
    if not 1 <= len(parts) <= 4 or not all(part.isdigit() for part in parts):
        raise QuantError(f"TensorRT version '{version}' is not MAJOR[.MINOR[.PATCH]]", "pass e.g. --trt-version 10.13")
    major, minor, patch = (int(part) for part in (parts + ["0", "0"])[:3])
    if major >= 11:
        raise QuantError(f"TensorRT {version} has no calibration caches (implicit INT8 calibration was removed in 11.0)",
                         "use the Q/DQ model (model.int8.onnx), or pass --trt-version 10.x or 8.x for a cache")
    multiplier = tensorrt_facts().cache_multiplier(major)
    if multiplier is None:
        raise QuantError(f"TensorRT {version} is too old for this cache format", "pass --trt-version 8.6 or 10.x")
    if multiplier == 10000:
        if minor > 99 or patch > 99:
            raise QuantError(f"TensorRT version '{version}' has a part above 99", "pass e.g. --trt-version 10.13.0")
        return major * multiplier + minor * 100 + patch
    if minor > 9 or patch > 99:
        raise QuantError(f"TensorRT version '{version}' does not fit the {major}.x code", "pass e.g. 8.6.1")
    return major * multiplier + minor * 100 + patch


def version_from_code(code: int) -> str:
    """Inverse of ``trt_version_code``: 8601 → ``"8.6.1"``, 101300 → ``"10.13.0"``."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def make_header(trt_version: str, algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise QuantError(f"unknown TensorRT calibration algorithm '{algorithm}'", f"use one of: {', '.join(ALGORITHMS)}")
    return f"TRT-{trt_version_code(trt_version)}-{algorithm}"


def amax_to_scale(amax: float) -> float:
    """INT8 scale for a symmetric range ``[-amax, amax]``: float32 ``amax / 127`` (never 0)."""
    if not np.isfinite(amax) or amax < 0:
        raise QuantError(f"amax {amax} is not a finite non-negative number", "check the calibration statistics")
    scale = np.float32(np.float32(amax) / np.float32(127.0))
    return float(max(scale, np.float32(_MIN_SCALE)))


@dataclass
class CalibrationCache:
    header: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def trt_version(self) -> str:
        return version_from_code(int(self._header_parts()[0]))

    @property
    def version_code(self) -> int:
        return int(self._header_parts()[0])

    @property
    def algorithm(self) -> str:
        return self._header_parts()[1]

    def _header_parts(self) -> tuple[str, str]:
        match = _HEADER.match(self.header)
        if not match:
            raise QuantError(f"calibration cache header '{self.header}' is not TRT-<version>-<Algorithm>",
                             "make the header with vision.artifacts.cache.make_header")
        return match.group(1), match.group(2)

    def amax(self) -> dict[str, float]:
        return {name: scale * 127.0 for name, scale in self.scales.items()}


def _scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def serialize_cache(cache: CalibrationCache) -> bytes:
    cache._header_parts()
    lines = [cache.header]
    for name, scale in cache.scales.items():
        if not name or "\n" in name or ": " in name:
            raise QuantError(f"tensor name {name!r} cannot be written to a calibration cache (readers split on ': ')",
                             "rename the tensor in the ONNX model")
        value = float(scale)
        if not np.isfinite(value) or value <= 0:
            raise QuantError(f"scale {value} of tensor '{name}' is not a positive finite number",
                             "compute scales with vision.artifacts.cache.amax_to_scale")
        lines.append(f"{name}: {_scale_hex(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_cache(data: bytes, source: str = "<bytes>") -> CalibrationCache:
    """Parse a cache; anything malformed raises one line naming the file and line number."""
    fix = "delete it (it will be recomputed) or pass another --calib-cache"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuantError(f"calibration cache {source} is not text (byte {exc.start})", fix) from exc
    lines = text.splitlines()
    if not lines or not _HEADER.match(lines[0].strip()):
        first = lines[0][:60] if lines else ""
        raise QuantError(f"calibration cache {source} line 1: '{first}' is not a TRT-<version>-<Algorithm> header", fix)
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        match = _LINE.match(line.rstrip("\r"))
        if not match:
            raise QuantError(f"calibration cache {source} line {number}: '{line[:60]}' is not '<tensor>: <8 hex digits>'",
                             fix)
        name, bits = match.group(1), match.group(2)
        if name in scales:
            raise QuantError(f"calibration cache {source} line {number}: tensor '{name}' appears twice", fix)
        scales[name] = struct.unpack(">f", bytes.fromhex(bits))[0]
    return CalibrationCache(lines[0].strip(), scales)


def retarget(cache: CalibrationCache, *, trt_version: str | None = None,
             algorithm: str | None = None) -> CalibrationCache:
    """The same scales under another header: ``trt_version`` (the exact TensorRT that will read it) and/or
    ``algorithm`` (the calibrator that will read it; trtexec's is EntropyCalibration2)."""
    return CalibrationCache(make_header(trt_version or cache.trt_version, algorithm or cache.algorithm),
                            dict(cache.scales))


def cache_facts(cache: CalibrationCache, read_by: str) -> dict[str, Any]:
    """What build.json says about one cache file: the exact TensorRT version and calibrator it serves."""
    return {"header": cache.header, "tensorrt_version": cache.trt_version, "algorithm": cache.algorithm,
            "tensors": len(cache.scales), "read_by": read_by,
            "note": f"TensorRT uses it only at exactly {cache.trt_version}; for another version run "
                    "`vision-quant cache retarget FILE --trt-version X.Y.Z` (same scales, new header)"}


def load_for_tensorrt(path: str | os.PathLike[str], expected_header: str) -> bytes:
    """The cache bytes to hand TensorRT's ``read_calibration_cache``, validated before TensorRT sees them.

    TensorRT's Python binding catches any exception raised inside ``read_calibration_cache``, prints it and treats
    the cache as absent (``python/src/infer/pyInt8.cpp``), then calibrates and writes over the cache: checks made
    there would never stop a build. So the file is parsed and its header compared here, and TensorRT gets bytes."""
    cache = read_cache(path)
    if cache.header != expected_header:
        raise QuantError(f"calibration cache {path} has header '{cache.header}', the TensorRT here reads "
                         f"'{expected_header}' (it would ignore the cache and calibrate itself)",
                         f"re-label it: vision-quant cache retarget {path} --trt-version "
                         f"{CalibrationCache(expected_header).trt_version} --out NEW.cache, or rebuild with --force")
    return serialize_cache(cache)


@dataclass
class CacheProvenance:
    """What a cache was computed from; written next to it as ``<cache>.json``."""

    model_sha256: str
    data_fingerprint: str
    calibrator: str
    options: dict[str, Any]
    trt_version: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheProvenance:
        return cls(**{key: data[key] for key in ("model_sha256", "data_fingerprint", "calibrator", "options",
                                                  "trt_version")})


def sidecar_path(cache_path: str | os.PathLike[str]) -> Path:
    path = Path(cache_path)
    return path.with_name(path.name + ".json")


def write_cache(path: str | os.PathLike[str], cache: CalibrationCache,
                provenance: CacheProvenance | None = None) -> Path:
    """Write the cache atomically, and its provenance sidecar when given (a stale sidecar is removed)."""
    data = serialize_cache(cache)
    target = Path(path)
    sidecar = sidecar_path(target)
    if sidecar.exists():  # never leave an old sidecar describing a new cache, even if we stop half-way
        sidecar.unlink()
    written = atomic_write_bytes(target, data)
    if provenance is not None:
        atomic_write_json(sidecar, provenance.to_json())
    return written


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise QuantError(f"calibration cache not found: {source}", "check the --calib-cache path") from None
    except OSError as exc:
        raise QuantError(f"cannot read calibration cache {source}: {exc.strerror or exc}", "check permissions") from exc
    return parse_cache(data, str(source))


def read_provenance(cache_path: str | os.PathLike[str]) -> CacheProvenance | None:
    sidecar = sidecar_path(cache_path)
    if not sidecar.is_file():
        return None
    try:
        return CacheProvenance.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuantError(f"cache provenance {sidecar} is unreadable ({exc.__class__.__name__})",
                         "delete it and the cache next to it, or pass --force to recalibrate") from exc


def _differences(found: CacheProvenance, expected: CacheProvenance) -> list[str]:
    labels = {"model_sha256": "model", "data_fingerprint": "calibration data", "calibrator": "calibrator",
              "options": "calibration options", "trt_version": "TensorRT version"}
    ours, theirs = expected.to_json(), found.to_json()
    return [label for key, label in labels.items() if json.dumps(ours[key], sort_keys=True)
            != json.dumps(theirs[key], sort_keys=True)]


def check_reusable(cache_path: str | os.PathLike[str], expected: CacheProvenance, tensors: Sequence[str], *,
                   force: bool) -> CalibrationCache | None:
    """TensorRT's read_calibration_cache contract, hardened.

    - no cache file → ``None`` (calibrate);
    - a cache with a sidecar → reused when model, data, calibrator, options and TensorRT version all match;
    - a cache without sidecar (trtexec, Polygraphy, another tool) → reused when its header (version and algorithm)
      matches and it has a scale for every tensor we calibrate (extra names are fine: TensorRT lists internal ones);
    - anything else → ``QuantError`` naming what differs. With ``force=True`` a mismatched or unreadable cache is
      ignored instead (``None``: recalibrate, and the caller overwrites it); a matching one is still reused.
    """
    path = Path(cache_path)
    if not path.exists():
        return None
    fix = f"delete {path}, pass another --calib-cache, or add --force to recalibrate and overwrite it"
    try:
        cache = read_cache(path)
        provenance = read_provenance(path)
    except QuantError:
        if force:
            return None
        raise
    problems: list[str] = []
    if provenance is not None:
        problems += [f"another {label}" for label in _differences(provenance, expected)]
    else:
        spec = CALIBRATORS.get(expected.calibrator)
        wanted = make_header(expected.trt_version, spec.trt_algorithm if spec else "EntropyCalibration2")
        if cache.header != wanted:
            problems.append(f"header {cache.header} (expected {wanted}: another algorithm or TensorRT version)")
    missing = [name for name in tensors if name not in cache.scales]
    if missing:
        problems.append(f"another model ({len(missing)} of {len(tensors)} tensors missing, e.g. '{missing[0]}')")
    if not problems:
        return cache
    if force:
        return None
    raise QuantError(f"calibration cache {path} was made for {'; '.join(problems)}", fix)


def retarget_file(source: str | os.PathLike[str], out: str | os.PathLike[str], *, trt_version: str | None = None,
                  algorithm: str | None = None) -> CalibrationCache:
    """``vision-quant cache retarget``: write ``source``'s scales under a new header to ``out`` (atomically), with
    its provenance sidecar carried over (TensorRT version updated, the original header recorded)."""
    src, dst = Path(source), Path(out)
    if dst.resolve() == src.resolve():
        raise QuantError(f"--out {dst} is the cache being re-labelled", "write the re-labelled cache to another file")
    cache = read_cache(src)
    new = retarget(cache, trt_version=trt_version, algorithm=algorithm)
    provenance = read_provenance(src)
    if provenance is not None:
        provenance = CacheProvenance(**{**provenance.to_json(), "trt_version": new.trt_version})
    write_cache(dst, new, provenance)
    if provenance is not None:  # say where the scales came from, next to the provenance the build compares
        atomic_write_json(sidecar_path(dst), {**provenance.to_json(), "retargeted_from": cache.header})
    return new


def data_fingerprint(paths: Sequence[str | os.PathLike[str]], options: Mapping[str, Any]) -> str:
    """sha256 over the calibration images' contents (sorted, so names, folders and order don't matter: the default
    statistics are order-independent; kept in order for ``options["histogram"] == "trt"``) and the options that change what the calibrators see (JSON, sorted keys).
    Content hashing costs ~0.1 s per 50 MB of images; mtimes would change on every copy of the data set."""
    digests = []
    for item in paths:
        try:
            digests.append(sha256_file(item))
        except OSError as exc:
            raise QuantError(f"cannot read calibration image {item}: {exc.strerror or exc}", "check the file") from exc
    total = hashlib.sha256()
    # TensorRT's growing histogram depends on image order: only then does the order belong in the fingerprint
    for digest in (digests if options.get("histogram") == "trt" else sorted(digests)):
        total.update(digest.encode("ascii"))
    total.update(json.dumps(dict(options), sort_keys=True, default=str).encode("utf-8"))
    return total.hexdigest()

"""TensorRT facts as data (``tensorrt.yaml``), per TensorRT version read at its tag: builder flags, network flags,
calibrator classes, trtexec options, the calibration cache's version code and the engine I/O data types.

Versions whose source is not in the stored upstream snapshot (11.2-11.4) carry rows read from NVIDIA's versioned
documentation (``Source.url``, ``pinned: false``); options those pages do not name have no row and are not emitted.

The engine builder (``vision.backends.trt``), the trtexec lines (``vision.artifacts.trtexec``) and the cache header
(``vision.artifacts.cache``) ask these rows; none of them names a TensorRT flag or option on its own.

Target version: the installed TensorRT, else ``--trt-version``, else ``DEFAULT_TRT_VERSION`` (the newest 10.x
read, the last line with implicit INT8 calibration and calibration caches).
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, load_table

TABLE = "tensorrt.yaml"
DEFAULT_TRT_VERSION = "10.13.0"


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in str(version).strip().split(".")[:3] if p.isdigit()]
    padded = parts + [0, 0, 0]
    return padded[0], padded[1], padded[2]


class Version(Fact):
    name: str
    min: str  # inclusive
    max: str  # exclusive
    # none: weakly typed only (8.x); opt-in: STRONGLY_TYPED network flag / trtexec --stronglyTyped (10.x);
    # always: every network is strongly typed and no flag is needed (11.x)
    strong_typing: Literal["none", "opt-in", "always"]

    def contains(self, version: str) -> bool:
        return version_tuple(self.min) <= version_tuple(version) < version_tuple(self.max)


class BuilderFlag(Fact):
    version: str
    name: str
    present: bool


class NetworkFlag(Fact):
    version: str
    name: str
    present: bool
    deprecated: bool


class Calibrator(Fact):
    version: str
    python_class: str
    algorithm: str  # the word in the cache header this calibrator reads and writes
    present: bool


class TrtexecOption(Fact):
    version: str
    name: str
    parsed: bool


class CacheHeader(Fact):
    majors: list[int]
    major_multiplier: int  # code = MAJOR*multiplier + MINOR*100 + PATCH


class EngineIoDtype(Fact):
    name: str  # tensorrt.DataType member
    torch: str  # the torch dtype holding it on the device
    numpy: str | None  # what the host sees; None: tensorrt.nptype has no numpy type (widened to float32)


class Nptype(Fact):
    numpy_less: list[str]  # DataType members tensorrt.nptype() raises TypeError for


class TensorrtFacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    versions: list[Version]
    builder_flags: list[BuilderFlag]
    network_flags: list[NetworkFlag]
    calibrators: list[Calibrator]
    trtexec_options: list[TrtexecOption]
    cache_header: list[CacheHeader]
    engine_io_dtypes: list[EngineIoDtype]
    nptype: list[Nptype]

    def row_name(self, version: str) -> str:
        for row in self.versions:
            if row.contains(version):
                return row.name
        known = ", ".join(f"{r.min}..<{r.max}" for r in self.versions)
        raise QuantError(f"TensorRT {version} is outside the versions this tool was checked against ({known})",
                         "install tensorrt>=8.6,<12 or pass a matching --trt-version")

    def builder_flag(self, version: str, name: str) -> bool:
        row = self.row_name(version)
        return any(f.present for f in self.builder_flags if f.version == row and f.name == name)

    def network_flag(self, version: str, name: str) -> NetworkFlag | None:
        row = self.row_name(version)
        return next((f for f in self.network_flags if f.version == row and f.name == name and f.present), None)

    def calibrator_classes(self, version: str) -> dict[str, str]:
        """Cache header word -> TensorRT calibrator class, for the calibrators ``version`` has (none on 11+)."""
        row = self.row_name(version)
        return {c.algorithm: c.python_class for c in self.calibrators if c.version == row and c.present}

    def trtexec_parses(self, version: str, option: str) -> bool:
        row = self.row_name(version)
        return any(o.parsed for o in self.trtexec_options if o.version == row and o.name == option)

    def cache_multiplier(self, major: int) -> int | None:
        return next((h.major_multiplier for h in self.cache_header if major in h.majors), None)

    # -- what a build does on a version ---------------------------------------------------------------------------
    def implicit_int8(self, version: str) -> bool:
        """Implicit INT8 (a calibrator feeding the INT8 flag) exists."""
        return bool(self.calibrator_classes(version)) and self.builder_flag(version, "INT8")

    def version_row(self, version: str) -> Version:
        name = self.row_name(version)
        return next(r for r in self.versions if r.name == name)

    def strongly_typed(self, version: str) -> bool:
        """Strongly typed networks exist (opt-in on 10.x, the only kind on 11.x)."""
        return self.version_row(version).strong_typing != "none"

    def strong_typing_flag(self, version: str) -> bool:
        """Strong typing must be asked for (NetworkDefinitionCreationFlag.STRONGLY_TYPED, trtexec --stronglyTyped);
        on 11.x every network is strongly typed and the flag is deprecated or gone."""
        return self.version_row(version).strong_typing == "opt-in"

    def io_dtype(self, name: str) -> EngineIoDtype:
        row = next((r for r in self.engine_io_dtypes if r.name == name), None)
        if row is None:
            raise QuantError(f"the engine has an input or output of TensorRT type {name}, which this tool cannot map",
                             "rebuild the engine with FP32, FP16, BF16, FP8, INT8, INT32, INT64, BOOL or UINT8 I/O")
        return row

    def weak_fp16(self, version: str) -> bool:
        """FP16 by the builder flag (weakly typed); without it FP16 needs an FP16 ONNX in a strongly typed network."""
        return self.builder_flag(version, "FP16")

    def qdq_high_precision(self, version: str) -> str:
        """The dtype of the TensorRT-layout Q/DQ model's unquantized layers: FP16 where the target builds it as a
        strongly typed network (which runs the ONNX's types as written), FP32 for older targets, which build it
        weakly typed with their own FP16 flag."""
        if version_tuple(version) < min(version_tuple(r.min) for r in self.versions):
            return "fp32"
        return "fp16" if self.strongly_typed(version) else "fp32"

    def cache_version(self, version: str) -> str:
        """The TensorRT version a calibration cache is written for: ``version`` where it reads caches, else the
        default (TensorRT 11 reads none; the cache then only carries scales to the Q/DQ writer).
        Versions older than the table (7.x, 8.0-8.5) keep their own header: the cache format is the same."""
        if version_tuple(version) < min(version_tuple(r.min) for r in self.versions):
            return version
        if self.calibrator_classes(version):
            return version
        return DEFAULT_TRT_VERSION


@functools.cache
def tensorrt_facts() -> TensorrtFacts:
    return load_table("vision.backends.upstream", TABLE, TensorrtFacts)

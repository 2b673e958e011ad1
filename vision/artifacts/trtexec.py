"""The `trtexec` command lines equivalent to what `vision-quant build` does, for users who build with trtexec.

Each line is meant to be pasted in the output directory: every file it reads is published there, every engine it
writes has a name of its own, and every option is one the target TensorRT's trtexec parses
(``vision/backends/upstream/tensorrt.yaml``, read per tag in ``samples/common/sampleOptions.cpp``):

- up to 10.x, FP16 is ``--fp16``; INT8 from the cache is ``--int8 --fp16 --calib=``. trtexec's only calibrator is
  an ``IInt8EntropyCalibrator2`` (``samples/common/sampleEngines.cpp``, ``RndInt8Calibrator``): with a cache
  present it binds no data, so a cache it does not accept (another header) fails the build. The line therefore
  reads ``calibration.trtexec.cache``: the build's scales under an ``EntropyCalibration2`` header.
- INT8 from the cache keeps the build's float layers (the detection head, accuracy-budget layers) in FP32 with
  ``--precisionConstraints=obey --layerPrecisions=N:fp32,... --layerOutputTypes=N:fp32,...``; trtexec matches
  exact names against its layers, which the ONNX parser names after their nodes. Only float-computing nodes are
  named (``vision.graph.float_compute_nodes``), as our own engine build constrains them.
- TensorRT 11 has none of ``--fp16/--int8/--calib`` ("Unknown option"); every network is strongly typed, so FP16
  builds from ``model.fp16.onnx`` and INT8 from the Q/DQ model, without ``--stronglyTyped`` (needed on 10.x only).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vision.backends.upstream import tensorrt_facts
from vision.model import ModelInfo

TRTEXEC_CACHE = "calibration.trtexec.cache"  # the build's scales under the header trtexec's calibrator reads
TRTEXEC_ALGORITHM = "EntropyCalibration2"
TIMING_CACHE = "model.timing.cache"
# characters trtexec's list parser splits on (',' between entries, "'" quoting): a layer name holding one cannot be
# named; '*' would be read as a wildcard (samples/common/sampleOptions.cpp splitNameAndValue, findPlausible)
_UNNAMEABLE = (",", "'", "*")


@dataclass(frozen=True)
class TrtexecLine:
    """One command and the files it uses, for build.json."""

    command: str
    onnx: str
    engine: str
    calib: str | None = None
    float_layers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "reads": [name for name in (self.onnx, self.calib) if name],
                "writes": [self.engine, TIMING_CACHE] if TIMING_CACHE in self.command else [self.engine],
                "onnx": self.onnx, "calib": self.calib, "engine": self.engine, "float_layers": self.float_layers}


@dataclass
class TrtexecPlan:
    """The lines for one TensorRT version, and why any expected line or option is missing."""

    trt_version: str
    lines: dict[str, TrtexecLine] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"tensorrt": self.trt_version, **{key: line.to_json() for key, line in self.lines.items()},
                **({"notes": self.notes} if self.notes else {})}


def _shapes(info: ModelInfo, hw: tuple[int, int], max_batch: int) -> list[str]:
    if info.fixed_batch is not None and info.fixed_hw is not None:
        return []
    h, w = hw
    name = info.input_name
    lo, hi = (1, max_batch) if info.fixed_batch is None else (info.fixed_batch, info.fixed_batch)
    return [f"--minShapes={name}:{lo}x3x{h}x{w}", f"--optShapes={name}:{hi}x3x{h}x{w}",
            f"--maxShapes={name}:{hi}x3x{h}x{w}"]


def trtexec_lines(info: ModelInfo, hw: tuple[int, int], max_batch: int, *, onnx_name: str, trt_version: str,
                  cache_name: str | None = None, qdq_name: str | None = None, fp16_name: str | None = None,
                  float_layers: Sequence[str] = ()) -> TrtexecPlan:
    """fp32 / fp16 / int8 from the cache / int8 from the Q/DQ model, as far as ``trt_version``'s trtexec accepts
    them. ``onnx_name``: the model file in the output directory; ``cache_name``: the cache trtexec reads (under the
    EntropyCalibration2 header); ``fp16_name``: the FP16 ONNX (for a TensorRT without ``--fp16``);
    ``float_layers``: float-computing nodes kept out of INT8."""
    facts = tensorrt_facts()

    def has(option: str) -> bool:
        return facts.trtexec_parses(trt_version, option)

    plan = TrtexecPlan(trt_version)
    notes = plan.notes
    shape_options = _shapes(info, hw, max_batch)
    if shape_options and not all(has(o) for o in ("--minShapes", "--optShapes", "--maxShapes")):
        notes.append(f"trtexec {trt_version}: --minShapes/--optShapes/--maxShapes not confirmed in the table; "
                     "add them as for 11.1 for a dynamic-batch engine")
        shape_options = []
    if not has("--timingCacheFile"):
        notes.append(f"trtexec {trt_version}: --timingCacheFile not confirmed in the table; left out")
    common = [*shape_options, *([f"--timingCacheFile={TIMING_CACHE}"] if has("--timingCacheFile") else [])]

    def line(onnx: str, options: list[str], engine: str, **extra: Any) -> TrtexecLine:
        args = ["trtexec", f"--onnx={onnx}", *options, *common, f"--saveEngine={engine}"]
        return TrtexecLine(command=shlex.join(args), onnx=onnx, engine=engine, **extra)

    if not (has("--onnx") and has("--saveEngine")):
        notes.append(f"trtexec {trt_version}: --onnx/--saveEngine not in the table")
        return plan
    strong = facts.strongly_typed(trt_version)
    typed = ["--stronglyTyped"] if facts.strong_typing_flag(trt_version) and has("--stronglyTyped") else []
    if strong and facts.strong_typing_flag(trt_version) and not typed:
        strong = False  # strong typing must be asked for, and this trtexec cannot
    lines = plan.lines
    lines["fp32"] = line(onnx_name, [], "model.fp32.engine")
    if has("--fp16"):
        lines["fp16"] = line(onnx_name, ["--fp16"], "model.fp16.engine")
    elif fp16_name and strong:
        lines["fp16"] = line(fp16_name, typed, "model.fp16.engine")
    if cache_name and facts.calibrator_classes(trt_version) and all(has(o) for o in ("--int8", "--calib", "--fp16")):
        # FP16 together with INT8: INT8 alone is no faster than FP16 (NVIDIA/TensorRT#993).
        int8 = ["--int8", "--fp16", f"--calib={cache_name}"]
        constrained = list(dict.fromkeys(float_layers))
        unnameable = [name for name in constrained if not name or any(c in name for c in _UNNAMEABLE)]
        constraints = ("--precisionConstraints", "--layerPrecisions", "--layerOutputTypes")
        if constrained and (unnameable or not all(has(o) for o in constraints)):
            why = (f"layer '{unnameable[0]}' cannot be named in --layerPrecisions" if unnameable
                   else f"trtexec {trt_version} has no precision constraint options")
            notes.append(f"no int8_cache line: {why}, so the float layers could not be kept in FP32")
        else:
            if constrained:
                int8 += ["--precisionConstraints=obey",
                         "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in constrained),
                         "--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in constrained)]
            lines["int8_cache"] = line(onnx_name, int8, "model.int8_cache.engine", calib=cache_name,
                                       float_layers=len(constrained))
    if qdq_name and strong:
        lines["int8_qdq"] = line(qdq_name, typed, "model.int8_qdq.engine")
    return plan


def options_used(command: str) -> list[str]:
    """The ``--option`` names of one command line (for checking them against the table)."""
    return [part.split("=", 1)[0] for part in shlex.split(command) if part.startswith("--")]

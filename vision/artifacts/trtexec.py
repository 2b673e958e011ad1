"""The `trtexec` command lines equivalent to what `vision-quant build` does, for users who build with trtexec.

Every option is checked against the target TensorRT's trtexec (``vision/backends/upstream/tensorrt.yaml``): up to
10.x FP16 is ``--fp16`` and INT8 from the cache is ``--int8 --fp16 --calib=``; TensorRT 11's trtexec has none of
them (they fail with "Unknown option"), so there FP16 builds from ``model.fp16.onnx`` and INT8 from the Q/DQ model.
"""

from __future__ import annotations

from vision.backends.upstream import tensorrt_facts
from vision.model import ModelInfo


def _shapes(info: ModelInfo, hw: tuple[int, int], max_batch: int) -> list[str]:
    if info.fixed_batch is not None and info.fixed_hw is not None:
        return []
    h, w = hw
    name = info.input_name
    lo, hi = (1, max_batch) if info.fixed_batch is None else (info.fixed_batch, info.fixed_batch)
    return [f"--minShapes={name}:{lo}x3x{h}x{w}", f"--optShapes={name}:{hi}x3x{h}x{w}",
            f"--maxShapes={name}:{hi}x3x{h}x{w}"]


def trtexec_commands(info: ModelInfo, hw: tuple[int, int], max_batch: int, cache_name: str | None,
                     qdq_name: str | None, *, trt_version: str, fp16_name: str | None = None) -> dict[str, str]:
    """fp32 / fp16 / int8 from the calibration cache / int8 from the Q/DQ model, as far as ``trt_version``'s
    trtexec accepts them. ``fp16_name``: the FP16 ONNX (for a TensorRT without ``--fp16``)."""
    facts = tensorrt_facts()

    def has(option: str) -> bool:
        return facts.trtexec_parses(trt_version, option)

    onnx = info.path.name
    shapes = " ".join(_shapes(info, hw, max_batch))
    common = f"{shapes} --timingCacheFile=model.timing.cache".strip()
    commands = {"fp32": f"trtexec --onnx={onnx} {common} --saveEngine=model.fp32.engine"}
    if has("--fp16"):
        commands["fp16"] = f"trtexec --onnx={onnx} --fp16 {common} --saveEngine=model.fp16.engine"
    elif fp16_name and has("--stronglyTyped"):
        commands["fp16"] = f"trtexec --onnx={fp16_name} --stronglyTyped {common} --saveEngine=model.fp16.engine"
    if cache_name and has("--int8") and has("--calib") and has("--fp16"):
        # FP16 together with INT8: INT8 alone is no faster than FP16 (NVIDIA/TensorRT#993).
        commands["int8_cache"] = (f"trtexec --onnx={onnx} --int8 --fp16 --calib={cache_name} {common} "
                                  "--saveEngine=model.int8.engine")
    if qdq_name and has("--stronglyTyped"):
        commands["int8_qdq"] = (f"trtexec --onnx={qdq_name} --stronglyTyped {common} "
                                "--saveEngine=model.int8.engine")
    return commands


def options_used(command: str) -> list[str]:
    """The ``--option`` names of one command line (for checking them against the table)."""
    return [part.split("=", 1)[0] for part in command.split() if part.startswith("--")]

"""The `trtexec` command lines equivalent to what `vision-quant build` does, for users who build with trtexec."""

from __future__ import annotations

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
                     qdq_name: str | None) -> dict[str, str]:
    """fp32 / fp16 / int8 from the calibration cache (TensorRT 8.6–10.x) / int8 from the Q/DQ model (10.x+)."""
    onnx = info.path.name
    shapes = " ".join(_shapes(info, hw, max_batch))
    common = f"{shapes} --timingCacheFile=model.timing.cache".strip()
    commands = {
        "fp32": f"trtexec --onnx={onnx} {common} --saveEngine=model.fp32.engine",
        "fp16": f"trtexec --onnx={onnx} --fp16 {common} --saveEngine=model.fp16.engine",
    }
    if cache_name:
        # FP16 together with INT8: INT8 alone is no faster than FP16 (NVIDIA/TensorRT#993).
        commands["int8_cache"] = (f"trtexec --onnx={onnx} --int8 --fp16 --calib={cache_name} {common} "
                                  "--saveEngine=model.int8.engine")
    if qdq_name:
        commands["int8_qdq"] = (f"trtexec --onnx={qdq_name} --stronglyTyped {common} "
                                "--saveEngine=model.int8.engine")
    return commands

"""TensorRT: engine building (FP32/FP16/INT8 implicit or explicit Q/DQ), a cache-fed calibrator and a runner.

Written against the real TensorRT 8.6–11.x Python API and type-checked with mypy against tensorrt-stubs. The module
imports without TensorRT; every entry point imports it lazily through ``require`` (one clear line when absent).

Versions: which builder flags, network flags and calibrator classes a TensorRT has comes from the fact table
(``vision.backends.upstream``): the implicit INT8 calibrators exist up to 10.x (deprecated since 10.1); 11.x has
no FP16/INT8/OBEY_PRECISION_CONSTRAINTS builder flags and no calibrators, so every precision there is a strongly
typed network (FP16 from an FP16 ONNX, INT8 from the Q/DQ ONNX). 8.x networks need the EXPLICIT_BATCH flag.
Device buffers come from PyTorch's CUDA allocator (torch is already a dependency), so no extra CUDA binding is needed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from quant_common.atomic import atomic_write_bytes
from quant_common.errors import QuantError, require
from vision.backends.base import Runner, TensorSpec
from vision.backends.upstream import tensorrt_facts, version_tuple

__all__ = ["version_tuple"]  # re-exported: callers parse TensorRT versions from here

if TYPE_CHECKING:
    import tensorrt as trt

TRT_INSTALL = "pip install 'tensorrt>=8.6,<12' (NVIDIA's index) on a machine with an NVIDIA GPU"
Int8Mode = Literal["implicit", "explicit"]


def import_tensorrt(purpose: str = "--backend tensorrt") -> ModuleType:
    return require("tensorrt", purpose=purpose, install=TRT_INSTALL)


def choose_int8_mode(version: str, requested: Int8Mode | None = None) -> Int8Mode:
    """Implicit calibration where TensorRT has calibrators (8.6–10.x), explicit Q/DQ where it has only strongly
    typed networks (11+)."""
    facts = tensorrt_facts()
    implicit, explicit = facts.implicit_int8(version), facts.strongly_typed(version)
    if requested == "implicit" and not implicit:
        raise QuantError(f"TensorRT {version} removed implicit INT8 calibration (IInt8Calibrator)",
                         "build from the Q/DQ model (explicit INT8) or install tensorrt>=8.6,<11")
    if requested == "explicit" and not explicit:
        raise QuantError(f"TensorRT {version} cannot build strongly typed networks from Q/DQ ONNX",
                         "use implicit INT8 calibration or upgrade to TensorRT 10")
    return requested or ("implicit" if implicit else "explicit")


def builder_flags(version: str, precision: str, int8_mode: Int8Mode, float_layers: bool) -> tuple[str, ...]:
    """The ``BuilderFlag`` names to set. A strongly typed network (explicit INT8; everything on 11+) takes its
    precisions from the ONNX and accepts no precision flags."""
    facts = tensorrt_facts()
    if precision == "fp16":
        if not facts.weak_fp16(version):
            return ()  # FP16 comes from the FP16 ONNX (see needs_fp16_onnx)
        return ("FP16",)
    if precision == "int8" and int8_mode == "implicit":
        # INT8 alone is no faster than FP16: layers TensorRT keeps in float would fall back to FP32 (TRT#993).
        # OBEY: the build fails rather than silently running an excluded layer in INT8.
        return ("INT8", "FP16", *(("OBEY_PRECISION_CONSTRAINTS",) if float_layers else ()))
    return ()


def needs_fp16_onnx(version: str) -> bool:
    """FP16 on this TensorRT is a strongly typed network parsed from an FP16 ONNX (no FP16 builder flag)."""
    return not tensorrt_facts().weak_fp16(version)


# -- device memory ---------------------------------------------------------------------------------------------
def _torch_cuda() -> Any:
    """PyTorch, checked to have CUDA (imported dynamically: mypy should not type-check all of torch here)."""
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        raise QuantError("TensorRT needs an NVIDIA GPU, but PyTorch sees no CUDA device",
                         "run on a GPU machine with a CUDA build of PyTorch, or use --backend onnxruntime")
    return torch


class CalibrationFeed:
    """Serves TensorRT's calibrator callbacks: our cache (validated before the build), batches, the cache TensorRT
    writes back.

    Hardened Polygraphy ``Calibrator``. TensorRT's Python binding catches every exception raised in
    ``get_batch``/``read_calibration_cache``/``write_calibration_cache``, prints it and carries on
    (``python/src/infer/pyInt8.cpp``: a failed read means "no cache", so TensorRT calibrates and writes over it).
    Nothing here raises into TensorRT: the cache is checked beforehand (``vision.artifacts.cache.load_for_tensorrt``)
    and handed over as bytes, problems are recorded and raised by ``check`` after the build, and a cache TensorRT
    writes is kept in memory, never written over a published file.
    """

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], batch_size: int, cache: bytes | None) -> None:
        self.batch_size = batch_size
        self.cache = cache
        self._batches: Iterator[Mapping[str, np.ndarray]] = iter(batches)
        self._device: dict[str, Any] = {}
        self.batches_fed = 0
        self.batch_requests = 0
        self.written: bytes | None = None
        self.error: str | None = None

    def next_pointers(self, names: list[str]) -> list[int]:
        self.batch_requests += 1
        try:
            batch = next(self._batches, None)
            if batch is None:
                return []  # an empty list tells TensorRT the data is exhausted
            torch = _torch_cuda()
            pointers = []
            for name in names:
                if name not in batch:
                    raise QuantError(f"TensorRT asked for calibration input '{name}', which the data does not "
                                     "provide", "calibrate a model with a single image input")
                self._device[name] = torch.from_numpy(np.ascontiguousarray(batch[name])).cuda()
                pointers.append(int(self._device[name].data_ptr()))
        except Exception as exc:  # noqa: BLE001 - TensorRT would swallow it: keep it for check()
            self.error = self.error or str(exc) or exc.__class__.__name__
            return []
        self.batches_fed += 1
        return pointers

    def read_cache(self) -> bytes | None:
        return self.cache

    def write_cache(self, data: bytes) -> None:
        self.written = bytes(data)

    def check(self, version: str) -> dict[str, Any]:
        """After the build: raise what TensorRT swallowed; facts for build.json otherwise."""
        if self.error is not None:
            raise QuantError(f"INT8 calibration failed inside TensorRT's calibrator: {self.error}",
                             "check the calibration images and the model input")
        if self.cache is not None and self.batch_requests:
            raise QuantError(f"TensorRT {version} did not use the calibration cache (it asked for calibration data: "
                             "the cache's header or tensors do not match this TensorRT)",
                             "re-label the cache with `vision-quant cache retarget CACHE --trt-version "
                             f"{version}` or rebuild it with --force")
        return {"cache_used": self.cache is not None, "batches_fed": self.batches_fed,
                "tensorrt_wrote_cache": None if self.written is None else
                ("same" if self.written == self.cache else "different (not saved)")}


class _FeedCalibrator:
    """The ``IInt8Calibrator`` methods, served by a ``CalibrationFeed``: one implementation that each TensorRT
    calibrator class below mixes in front of its TensorRT base (as Polygraphy uses one class over any base)."""

    feed: CalibrationFeed

    def get_batch_size(self) -> int:
        return self.feed.batch_size

    def get_batch(self, names: list[str]) -> list[int]:
        return self.feed.next_pointers(names)

    def read_calibration_cache(self) -> Any:
        return self.feed.read_cache()

    def write_calibration_cache(self, cache: Any) -> None:
        self.feed.write_cache(bytes(cache))


def make_calibrator(feed: CalibrationFeed, algorithm: str) -> trt.IInt8Calibrator:
    """A TensorRT calibrator of the class matching ``algorithm`` (the cache header word), driven by ``feed``."""
    trt_mod = import_tensorrt("INT8 calibration with TensorRT")
    table = tensorrt_facts().calibrator_classes(trt_mod.__version__)
    if not table:
        raise QuantError(f"TensorRT {trt_mod.__version__} has no INT8 calibrators (removed in 11.0)",
                         "use the Q/DQ model (explicit INT8) or install tensorrt>=8.6,<11")
    import tensorrt as trt

    # pybind11 bases: their __init__ must be called explicitly.
    class MinMaxCalibrator(_FeedCalibrator, trt.IInt8MinMaxCalibrator):
        def __init__(self) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.feed = feed

    class EntropyCalibrator2(_FeedCalibrator, trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feed = feed

    # the fact table names TensorRT's class for each cache header word; ours are keyed by the base they extend
    ours: dict[str, type[trt.IInt8Calibrator]] = {cls.__bases__[1].__name__: cls
                                                  for cls in (MinMaxCalibrator, EntropyCalibrator2)}
    if algorithm not in table or table[algorithm] not in ours:
        raise QuantError(f"no TensorRT calibrator reads caches of algorithm '{algorithm}'",
                         f"use one of {sorted(a for a in table if table[a] in ours)}")
    return ours[table[algorithm]]()


# -- engine building -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineSpec:
    """What to build: one precision, the input's name and size, and the dynamic-batch range."""

    onnx_path: Path
    engine_path: Path
    precision: Literal["fp32", "fp16", "int8"]
    input_name: str
    input_hw: tuple[int, int]
    dynamic_batch: bool
    opt_batch: int = 1
    max_batch: int = 8
    fixed_batch: int = 1  # used when the batch dimension is fixed
    dynamic_hw: bool = False  # H/W symbolic in the ONNX: pinned to input_hw by the profile
    workspace_gb: float = 4.0
    timing_cache_path: Path | None = None
    int8_mode: Int8Mode = "implicit"
    strongly_typed: bool = False  # precisions come from the ONNX (Q/DQ, or an FP16 ONNX); always so on 11+
    # ONNX node names kept out of INT8 (head, accuracy budget). Implicit INT8: constrained to FP32 here. Explicit:
    # the Q/DQ ONNX has no Q/DQ around them already, so strong typing runs them in float.
    float_layers: tuple[str, ...] = ()


def _parse_onnx(trt_mod: Any, builder: trt.Builder, spec: EngineSpec, logger: trt.ILogger) -> trt.INetworkDefinition:
    import tensorrt as trt

    facts = tensorrt_facts()
    version = trt_mod.__version__
    flags = 0
    explicit_batch = facts.network_flag(version, "EXPLICIT_BATCH")
    if explicit_batch is not None and not explicit_batch.deprecated:  # 8.x; the default from 10.0, gone in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if spec.strongly_typed:
        if not facts.strongly_typed(version):
            raise QuantError(f"TensorRT {version} has no strongly typed networks", "install tensorrt>=10")
        if facts.strong_typing_flag(version):  # 11.x: every network is strongly typed, the flag is deprecated
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise QuantError(f"TensorRT's ONNX parser rejected {spec.onnx_path.name}: {errors[0] if errors else 'unknown'}",
                         "check the model with `polygraphy inspect model` or re-export it")
    return network


def constrain_float_layers(network: trt.INetworkDefinition, names: Iterable[str]) -> tuple[int, int]:
    """Pin the layers named after ``names`` (ONNX node names; the parser names a node's layer after it) to FP32,
    outputs included. Returns (constrained, skipped).

    Skipped: Constant layers (no arithmetic; their weights keep their type) and layers that are not float
    arithmetic: an integer or bool output, or a shape-tensor input (shape math, an NMS tail's indices). Under
    OBEY_PRECISION_CONSTRAINTS a forced FP32 there fails the build or changes what the layer computes."""
    import tensorrt as trt

    float_types = (trt.float32, trt.float16)
    wanted = set(names)
    constrained = skipped = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name not in wanted:
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
        if (layer.type == trt.LayerType.CONSTANT or not outputs
                or any(out.dtype not in float_types for out in outputs)
                or any(inp is not None and inp.is_shape_tensor for inp in inputs)):
            skipped += 1
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            layer.set_output_type(output, trt.float32)
        constrained += 1
    return constrained, skipped


def build_engine(spec: EngineSpec, calibrator: Any = None) -> dict[str, Any]:
    """Build and serialize ``spec.engine_path`` (atomically); returns facts for build.json."""
    trt_mod = import_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt_mod, builder, spec, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    constrained = skipped = 0
    flag_names = () if spec.strongly_typed else builder_flags(trt_mod.__version__, spec.precision, spec.int8_mode,
                                                                 bool(spec.float_layers))
    if spec.precision == "fp16" and not flag_names and not spec.strongly_typed:
        raise QuantError(f"TensorRT {trt_mod.__version__} has no FP16 builder flag", "build from an FP16 ONNX")
    for name in flag_names:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if spec.precision == "int8" and spec.int8_mode == "implicit":
        if calibrator is None:
            raise QuantError("implicit INT8 needs a calibrator", "pass the calibration cache")
        config.int8_calibrator = calibrator
        if spec.float_layers:
            constrained, skipped = constrain_float_layers(network, spec.float_layers)

    h, w = spec.input_hw
    if spec.dynamic_batch or spec.dynamic_hw:
        lo, opt, hi = (1, spec.opt_batch, spec.max_batch) if spec.dynamic_batch else (spec.fixed_batch,) * 3
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.input_name, trt.Dims([lo, 3, h, w]), trt.Dims([opt, 3, h, w]),
                          trt.Dims([hi, 3, h, w]))
        config.add_optimization_profile(profile)
        if spec.precision == "int8" and spec.int8_mode == "implicit":
            config.set_calibration_profile(profile)

    timing_cache = config.create_timing_cache(
        spec.timing_cache_path.read_bytes() if spec.timing_cache_path and spec.timing_cache_path.is_file() else b"")
    config.set_timing_cache(timing_cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise QuantError(f"TensorRT could not build a {spec.precision} engine from {spec.onnx_path.name}",
                         "rerun with QUANT_DEBUG=1 and read TensorRT's log above")
    atomic_write_bytes(spec.engine_path, bytes(memoryview(serialized)))
    if spec.timing_cache_path is not None:
        atomic_write_bytes(spec.timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return {"engine": str(spec.engine_path), "tensorrt": trt_mod.__version__, "precision": spec.precision,
            "int8_mode": spec.int8_mode if spec.precision == "int8" else None,
            "strongly_typed": spec.strongly_typed, "builder_flags": list(flag_names),
            "float_layers": constrained, "float_layers_skipped": skipped,
            "timing_cache": str(spec.timing_cache_path) if spec.timing_cache_path else None}


# -- runner ----------------------------------------------------------------------------------------------------
class TrtRunner(Runner):
    """Runs a serialized engine (``model.<precision>.engine``) with name→ndarray dicts, like ``OnnxrtRunner``.

    Work goes to a stream of its own (not the legacy default stream, which synchronizes with all other work on the
    device). ``inference_time`` is the enqueue and its synchronization only: host-to-device copies, allocation
    and the copies back are done outside it. I/O types come from the fact table (``engine_io_dtypes``):
    ``tensorrt.nptype`` has no numpy type for BF16/FP8, so those travel as torch tensors and reach the host
    widened to float32."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._torch: Any = None
        self._stream: Any = None

    def activate_impl(self) -> None:
        import_tensorrt()
        import tensorrt as trt

        if not self.engine_path.is_file():
            raise QuantError(f"engine not found: {self.engine_path}", "build it with vision-quant build --backend tensorrt")
        self._torch = _torch_cuda()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise QuantError(f"TensorRT cannot load {self.engine_path} (built by another TensorRT version or GPU?)",
                             "rebuild the engine on this machine")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = self._torch.cuda.Stream()

    def deactivate_impl(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None

    def _io_names(self, mode_input: bool) -> list[str]:
        import tensorrt as trt

        engine = self._require_engine()
        wanted = trt.TensorIOMode.INPUT if mode_input else trt.TensorIOMode.OUTPUT
        return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                if engine.get_tensor_mode(engine.get_tensor_name(i)) == wanted]

    def _require_engine(self) -> trt.ICudaEngine:
        if self._engine is None:
            raise QuantError("the TensorRT runner is not active", "use it as a context manager")
        return self._engine

    def _dtype(self, name: str) -> tuple[str, np.dtype]:
        """(torch dtype name on the device, numpy dtype on the host) of an I/O tensor."""
        row = tensorrt_facts().io_dtype(self._require_engine().get_tensor_dtype(name).name)
        return row.torch, np.dtype(row.numpy or np.float32)

    def _spec(self, name: str) -> TensorSpec:
        engine = self._require_engine()
        dims = engine.get_tensor_shape(name)
        shape = tuple(int(dims[i]) if int(dims[i]) >= 0 else None for i in range(len(dims)))
        return TensorSpec(name, shape, self._dtype(name)[1])

    def input_specs_impl(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._io_names(True)]

    def output_specs_impl(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._io_names(False)]

    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorrt as trt

        self._require_engine()  # inside the context manager
        context, torch, stream = self._context, self._torch, self._stream
        assert context is not None and stream is not None
        keep: list[Any] = []
        with torch.cuda.stream(stream):
            for name in self._io_names(True):
                device_dtype, _ = self._dtype(name)
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                if not context.set_input_shape(name, trt.Dims(list(host.shape))):
                    # outside the engine's profile: TensorRT would report -1 output dims (a negative-size buffer)
                    raise QuantError(f"input '{name}' of shape {list(host.shape)} is outside "
                                     f"{self.engine_path.name}'s optimization profile",
                                     "rebuild the engine with a larger --max-batch")
                device = host.to(device="cuda", non_blocking=False).to(getattr(torch, device_dtype))
                keep.append(device)
                context.set_tensor_address(name, int(device.data_ptr()))
            outputs: dict[str, Any] = {}
            for name in self._io_names(False):
                dims = context.get_tensor_shape(name)
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                outputs[name] = torch.empty(shape, dtype=getattr(torch, self._dtype(name)[0]), device="cuda")
                context.set_tensor_address(name, int(outputs[name].data_ptr()))
        stream.synchronize()  # inputs on the device before the clock starts
        start = time.perf_counter()
        if not context.execute_async_v3(int(stream.cuda_stream)):
            raise QuantError("TensorRT inference failed", "rerun with QUANT_DEBUG=1 and read TensorRT's log")
        stream.synchronize()
        self.timed_seconds = time.perf_counter() - start
        result = {}
        for name, tensor in outputs.items():
            host_dtype = self._dtype(name)[1]
            result[name] = tensor.to(getattr(torch, host_dtype.name)).cpu().numpy()
        return result

    @property
    def device(self) -> str:
        return "cuda"

"""`build(cfg) -> BuildResult`: model → calibration data → statistics → cache → Q/DQ models → engine → build.json.

Every artifact is written into a staging directory inside ``--out`` and moved into place only when the whole build
succeeded, so a failure leaves ``--out`` as it was (an ``--out`` created by this run is removed again).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from quant_common.atomic import atomic_write_json, publish_files, staging_area
from quant_common.errors import QuantError
from quant_common.manifest import Timings, package_versions, utc_now
from vision.artifacts.cache import CalibrationCache, cache_facts, retarget, sidecar_path, write_cache
from vision.artifacts.trtexec import TRTEXEC_ALGORITHM, TRTEXEC_CACHE, trtexec_lines
from vision.backends.select import select_backend, target_source
from vision.backends.upstream import tensorrt_facts
from vision.config import BUNDLED_MODEL, VisionConfig
from vision.export_kinds import check_supported, end_to_end_tail, export_kind
from vision.graph import float_compute_nodes
from vision.model import ModelInfo, load_model, resolve_batch, resolve_input_hw, simplify
from vision.model_prep import prepare_model
from vision.pipeline.stages import Int8Facts, Int8Outputs, engine_stage, quantize_int8

PACKAGES = ("tensorrt-quantization", "numpy", "onnx", "onnxruntime", "nvidia-modelopt", "onnxslim", "tensorrt")


@dataclass
class BuildResult:
    out_dir: Path
    artifacts: dict[str, Path]
    precision: str
    backend: str
    int8: Int8Facts | None = None  # None unless --precision int8
    engine: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object."""
        int8 = self.int8
        mixed = int8.mixed_precision if int8 is not None else None
        return {"out": str(self.out_dir), "artifacts": {k: str(v) for k, v in self.artifacts.items()},
                "precision": self.precision, "backend": self.backend,
                "calibrator": int8.calibrator if int8 else None,
                "calibrator_options": int8.calibrator_options if int8 else {},
                "cache_reused": int8.cache_reused if int8 else False, "images": int8.images if int8 else 0,
                "skipped_images": len(int8.skipped_images) if int8 else 0,
                "calibration_images": int8.calibration_images if int8 else {},
                "calib_stability": int8.stability if int8 else None,
                "agreement": int8.agreement if int8 else None, "qdq": int8.qdq if int8 else {},
                "engine": self.engine, "timings": self.timings,
                "float_layers": len(int8.float_layers) if int8 else 0,
                "mixed_precision": {k: v for k, v in mixed.items()
                                    if k not in ("trials", "layer_errors", "search", "regions", "openvino")}
                if mixed else None}


def resolve_model(cfg: VisionConfig) -> Path:
    if cfg.model is not None:
        return cfg.model
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL
    raise QuantError(f"no model given and the bundled detector {BUNDLED_MODEL.name} is not installed",
                     "pass MODEL.onnx (e.g. an Ultralytics YOLOv8 export)")


def check_budget_options(cfg: VisionConfig) -> None:
    """--accuracy-budget needs a labelled set and INT8; say so before any long work."""
    if cfg.accuracy_budget is None:
        return
    if cfg.data is None or cfg.annotations is None:
        raise QuantError("--accuracy-budget needs a labelled set to measure mAP on (--data DIR and --annotations FILE)",
                         "pass --data IMAGES_DIR --annotations coco.json, or drop --accuracy-budget")
    if cfg.precision != "int8":
        raise QuantError(f"--accuracy-budget applies to INT8 builds, not --precision {cfg.precision}",
                         "use --precision int8 or drop --accuracy-budget")
    if not cfg.data.is_dir():
        raise QuantError(f"--data directory not found: {cfg.data}", "pass the directory holding the labelled images")
    if not cfg.annotations.is_file():
        raise QuantError(f"annotation file not found: {cfg.annotations}", "pass a COCO-format instances json")


def check_batch(info: ModelInfo, batch: int, max_batch: int) -> int:
    """The calibration batch must fit the engine's profile (1..max_batch): TensorRT would otherwise calibrate and
    run shapes outside it (an invalid input shape, then a negative-size output buffer)."""
    if info.fixed_batch is None and batch > max_batch:
        raise QuantError(f"--batch {batch} is larger than --max-batch {max_batch} (the engine's largest batch)",
                         f"pass --max-batch {batch} or a --batch of at most {max_batch}")
    return batch


def build(cfg: VisionConfig) -> BuildResult:
    """Run the whole pipeline for ``cfg``; raise ``QuantError`` for anything the user can fix."""
    timings = Timings()
    check_budget_options(cfg)
    backend = select_backend(cfg.backend)
    model_path = resolve_model(cfg)
    with timings.measure("load_model"):
        info, model = load_model(model_path)
    kind = export_kind(info, model)
    check_supported(kind, info.path.name)  # segment/pose/obb/classify: one line, before any long work
    original_sha256 = info.sha256
    out = cfg.out
    with staging_area(out) as staging_dir:
        staging = staging_dir.root
        if cfg.simplify:
            with timings.measure("simplify"):
                simplify(info.path, staging / "model.simplified.onnx")
                info, model = load_model(staging / "model.simplified.onnx")
        result = BuildResult(out_dir=out, artifacts={}, precision=cfg.precision, backend=backend.name)
        manifest: dict[str, Any] = {"created": utc_now(), "model": {"path": str(model_path), "sha256": original_sha256,
                                                                    "input": info.input_name,
                                                                    "input_shape": list(info.input_shape),
                                                                    "opset": info.opset, "simplified": cfg.simplify,
                                                                    "quantized_sha256": info.sha256},
                                    "config": cfg.model_dump(mode="json")}
        manifest["model"]["export"] = kind.manifest()
        staged: dict[str, Path] = {}
        if cfg.simplify:
            # The cache's tensor names, the Q/DQ models and the trtexec lines all belong to the simplified graph:
            # publish it beside them.
            staged["simplified_model"] = info.path
            manifest["model"]["quantized_model"] = info.path.name
            manifest["model"]["note"] = (f"{info.path.name} (onnxslim) is the model the calibration cache, the Q/DQ "
                                         "models and the trtexec lines belong to")
        notes: list[str] = []
        hw = resolve_input_hw(info, cfg.imgsz, notes)
        for line in notes:  # said before the long work starts
            sys.stderr.write(f"note: {line}\n")
        manifest["notes"] = notes
        batch = check_batch(info, resolve_batch(info, cfg.batch, default_dynamic=min(cfg.max_batch, 8)), cfg.max_batch)
        int8: Int8Outputs | None = None
        target = backend.target_version(cfg.trt_version)
        manifest["tensorrt_target"] = {"version": target, "cache_header_version": backend.cache_header_version(
            cfg.trt_version), "from": "installed" if backend.makes_engine else target_source(cfg.trt_version)}
        if cfg.precision == "int8":
            with timings.measure("prepare_model"):
                prepared = prepare_model(info, model, staging)
            manifest["model"]["prepared"] = prepared.manifest(info)
            if prepared.changed:
                staged["prepared_model"] = prepared.info.path
            raw_head, tail = end_to_end_tail(prepared.model)
            if tail:
                manifest["model"]["export"].update(end_to_end=True, raw_head=raw_head, nms_tail_nodes=len(tail))
            int8 = quantize_int8(cfg, prepared.info, prepared.model, hw, batch, staging, timings,
                                 manifest["tensorrt_target"]["cache_header_version"], io_dtype=prepared.io_dtype,
                                 half=prepared.half, raw_head=raw_head, tail_nodes=tuple(tail))
            staged.update(int8.staged)
            manifest.update(int8.manifest)
            result.int8 = int8.facts
        if backend.makes_engine:
            with timings.measure("engine"):
                engine = engine_stage(cfg, backend, info, model, hw, staging, int8)
            if engine is not None:
                result.engine = engine.facts
                staged.update(engine.staged)
                manifest["engine"] = engine.facts
        _trtexec_stage(cfg, info, model, hw, staging, staged, manifest, int8, target)
        manifest["packages"] = package_versions(PACKAGES)
        manifest["timings"] = dict(timings)
        atomic_write_json(staging / "build.json", manifest)
        staged["build_json"] = staging / "build.json"  # published last: its presence means the build is complete
        # --calib-cache and --save-stats may point anywhere (another disk too); the rest goes to --out
        result.artifacts = publish_files(staged, out, {"cache": cfg.cache_path,
                                                       "cache_provenance": sidecar_path(cfg.cache_path),
                                                       "stats": cfg.save_stats})
        result.timings = dict(timings)
    return result


def _published_onnx(info: ModelInfo, staging: Path, out: Path, staged: dict[str, Path]) -> str:
    """The name under which the model the artifacts belong to lies in ``--out``: a model from elsewhere is
    published as ``model.onnx`` so that every trtexec line names a file in the output directory."""
    if info.path.parent == staging or info.path.resolve().parent == out.resolve():
        return info.path.name
    staged["model"] = staging / "model.onnx"
    shutil.copyfile(info.path, staged["model"])
    return "model.onnx"


def _trtexec_stage(cfg: VisionConfig, info: ModelInfo, model: onnx.ModelProto, hw: tuple[int, int], staging: Path,
                   staged: dict[str, Path], manifest: dict[str, Any], int8: Int8Outputs | None, target: str) -> None:
    """build.json's trtexec lines for the target TensorRT, the files they read, and what each cache serves."""
    facts = tensorrt_facts()
    onnx_name = _published_onnx(info, staging, cfg.out, staged)
    caches: dict[str, Any] = {}
    trtexec_cache = None
    if int8 is not None:
        cache = CalibrationCache(int8.header, dict(int8.scales))
        readers = facts.calibrator_classes(cache.trt_version)
        in_out = cfg.cache_path.resolve().parent == cfg.out.resolve()
        reader = readers.get(cache.algorithm)
        caches[cfg.cache_path.name if in_out else str(cfg.cache_path)] = cache_facts(
            cache, (f"a TensorRT {cache.trt_version} {reader} (vision-quant build's engine step)" if reader else
                    "no TensorRT calibrator (11.x has none)") + "; modelopt.onnx reads its scales")
        if facts.calibrator_classes(target) and facts.trtexec_parses(target, "--calib"):
            # trtexec reads caches only through its IInt8EntropyCalibrator2: the same scales under that header
            trtexec_cache = staging / TRTEXEC_CACHE
            relabelled = retarget(cache, algorithm=TRTEXEC_ALGORITHM)
            write_cache(trtexec_cache, relabelled)
            staged["trtexec_cache"] = trtexec_cache
            caches[TRTEXEC_CACHE] = cache_facts(relabelled, f"trtexec {relabelled.trt_version} --calib "
                                                "(IInt8EntropyCalibrator2, samples/common/sampleEngines.cpp)")
    float_layers = float_compute_nodes(model, int8.facts.float_layers) if int8 is not None else []
    plan = trtexec_lines(info, hw, cfg.max_batch, onnx_name=onnx_name, trt_version=target,
                         cache_name=TRTEXEC_CACHE if trtexec_cache else None,
                         qdq_name="model.int8.onnx" if "qdq_trt" in staged else None,
                         fp16_name="model.fp16.onnx" if "fp16_onnx" in staged else None, float_layers=float_layers)
    manifest["trtexec"] = plan.to_json()
    manifest["caches"] = caches

"""``--calib-stability K``: recalibrate on K seeded half-subsets of the calibration samples and report how far each
modelopt quantizer's ``amax`` moves (``quant_common.stability``).

Only the scales inference uses are compared: static activation quantizers' ``amax`` from the calibration pass,
weight quantizers' ``amax`` (they move only where calibration changes the weights: SmoothQuant's smoothing, AWQ's
pre-quant scales) and those pre-quant scales themselves (``<quantizer>.pre_quant_scale``). Per-token int8_sq input
quantizers compute their scale from each token at run time, so their stored ``amax`` is unused and left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm_quant.calibration import calibrate, per_token
from llm_quant.config import BuildConfig
from quant_common.errors import QuantError, require
from quant_common.stability import DEFAULT_THRESHOLD, StabilityReport, scale_spread


def quantizer_amax(model: Any) -> dict[str, np.ndarray]:
    """The calibrated scales of every enabled quantizer (modelopt ``TensorQuantizer``), by module name: its
    ``amax`` (not for per-token activations) and its ``pre_quant_scale`` where it has one."""
    found = {}
    for name, module in model.named_modules():
        if not name.endswith("_quantizer") or not getattr(module, "is_enabled", False):
            continue
        amax = getattr(module, "amax", None)
        if amax is not None and not per_token.is_per_token(module):
            found[name] = amax.detach().float().cpu().numpy()
        pre = getattr(module, "pre_quant_scale", None)
        if pre is not None:
            found[f"{name}.pre_quant_scale"] = pre.detach().float().cpu().numpy()
    return found


def half_subsets(batches: Sequence[Any], subsets: int, seed: int = 0) -> list[list[Any]]:
    """``subsets`` seeded random halves of the calibration samples (rows of ``batches``), regrouped into batches of
    the same size. Each sample joins each subset with probability 1/2; every subset holds at least one."""
    torch = require("torch", purpose="calibration subsets")
    if not batches:
        raise QuantError("the calibration data is empty", "pass files or a dataset with text in them")
    rows = torch.cat(list(batches))
    size = len(batches[0])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(subsets):
        keep = rng.random(len(rows)) < 0.5
        if not keep.any():
            keep[rng.integers(len(rows))] = True
        chosen = rows[torch.from_numpy(np.flatnonzero(keep))]
        out.append(list(chosen.split(size)))
    return out


def subset_stability(model: Any, batches: Sequence[Any], calibrate_on: Callable[[list[Any]], Any], subsets: int, *,
                     seed: int = 0, threshold: float = DEFAULT_THRESHOLD) -> StabilityReport:
    """The spread of each quantizer's ``amax`` of ``model`` (calibrated on ``batches``) over ``subsets``
    recalibrations, ``calibrate_on(batches) -> model`` each on a seeded half of the samples."""
    full = quantizer_amax(model)
    if not full:
        raise QuantError("this format has no calibrated scales to compare (dynamic or weight-only quantizers)",
                         "drop --calib-stability for this --qformat")
    start = time.perf_counter()
    halves = half_subsets(batches, subsets, seed)
    amaxes = [quantizer_amax(calibrate_on(half)) for half in halves]
    report = scale_spread(full, amaxes, [sum(len(b) for b in half) for half in halves], threshold)
    report.seconds = time.perf_counter() - start
    return report


def calibration_stability(cfg: BuildConfig, model: Any, batches: Sequence[Any], model_dir: Path, dtype: str,
                          device: str, exclude: list[str], plain_seconds: float = 0.0) -> dict[str, Any]:
    """``--calib-stability K`` of a build: ``model`` (calibrated on ``batches`` with ``exclude`` kept in higher
    precision) recalibrated from a fresh copy on K seeded half-subsets; build.json's record, with the time per
    subset beside the plain calibration's (``plain_seconds``)."""
    def calibrate_on(half: list[Any]) -> Any:
        fresh = calibrate.load_model(model_dir, dtype=dtype, device=device)
        return calibrate.quantize(fresh, cfg.qformat, half, exclude_modules=exclude, description="subset",
                                  **calibrate.quantize_options(cfg))

    report = subset_stability(model, batches, calibrate_on, cfg.calib_stability, seed=cfg.seed,
                              threshold=cfg.stability_threshold)
    return {**report.to_dict(), "seconds_per_subset": round(report.seconds / report.subsets, 3),
            "plain_calibration_seconds": round(plain_seconds, 3)}

"""What ``vision-quant compare`` measured, as data: one ``Variant`` per model and the ``CompareResult`` around them
(written as compare.json, rendered by ``vision.evaluation.report``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Variant:
    name: str
    calibrator: str | None
    model: str
    map50_95: float
    map50: float
    delta_map50_95: float = 0.0  # mAP points (x100) relative to FP32; negative = worse
    delta_map50: float = 0.0
    delta_map_ci95: list[float] | None = None  # paired 95 % interval of delta_map50_95 (bootstrap over images)
    delta_map50_ci95: list[float] | None = None
    latency_ms: float = 0.0  # p50, batch 1
    speedup: float = 1.0  # FP32 p50 / this p50
    excluded: list[str] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    runtime: str = "onnxruntime"  # what ran it: onnxruntime | openvino
    regions: list[str] = field(default_factory=list)  # float regions of a mixed variant (vision.regions)
    pareto: bool = False  # on the accuracy/latency Pareto front of everything the run measured


@dataclass
class CompareResult:
    model: str
    variants: list[Variant]
    images: int
    calib_images: int
    amax: dict[str, dict[str, float]]  # calibrator -> tensor -> amax
    layer_errors: list[dict[str, Any]]
    mixed: dict[str, Any]
    recommendation: dict[str, Any] = field(default_factory=dict)  # vision.pipeline.mixed_precision.recommend
    artifacts: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """The rows people read: variant, runtime, mAP50-95, mAP50, Δ vs FP32 with its 95 % interval, latency,
        speed-up, float layers, and whether the row is on the Pareto front / the recommended one."""
        pick = self.recommendation.get("variant")
        return [{"variant": v.name, "runtime": v.runtime, "map50_95": round(v.map50_95, 4), "map50": round(v.map50, 4),
                 "delta_map50_95": round(v.delta_map50_95, 2), "delta_map_ci95": _ci(v.delta_map_ci95),
                 "delta_map50": round(v.delta_map50, 2), "delta_map50_ci95": _ci(v.delta_map50_ci95),
                 "latency_ms": round(v.latency_ms, 2), "speedup": round(v.speedup, 2),
                 "excluded_layers": len(v.excluded), "pareto": v.pareto, "recommended": v.name == pick}
                for v in self.variants]


def _ci(ci: list[float] | None) -> list[float] | None:
    return [round(ci[0], 2), round(ci[1], 2)] if ci is not None else None

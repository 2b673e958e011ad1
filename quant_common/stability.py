"""How stable calibrated scales are: the same calibration repeated on seeded subsets of its data, per tensor.

A scale (``amax``) that moves a lot when half of the calibration data is left out was set by a few samples (an
outlier image, one unusual token) and would be set differently by the user's own data. Vision (per-tensor
activation ``amax``) and llm_quant (modelopt's ``amax`` per quantizer, scalar or per channel) both report it with
``scale_spread``: for each tensor, the range of its ``amax`` over the subsets relative to the full calibration's
(for a per-channel ``amax``, the largest such range over channels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quant_common.errors import QuantError

DEFAULT_THRESHOLD = 0.1  # a scale moving by more than 10 % of itself between subsets is flagged
SHOWN = 20  # tensors listed in build.json, most unstable first


@dataclass
class TensorSpread:
    tensor: str
    amax: float  # the full calibration's (largest channel for a per-channel amax)
    low: float  # smallest and largest over the subsets (of the channel with the largest spread)
    high: float
    spread: float  # (high - low) / amax

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class StabilityReport:
    subsets: int
    subset_samples: list[int]  # what each subset drew (images, sequences)
    threshold: float
    tensors: int
    unstable: list[str]  # spread above the threshold, most unstable first
    max_spread: float
    median_spread: float
    seconds: float = 0.0  # extra time the subsets cost (counting or recalibrating, plus their calibrators)
    spreads: list[TensorSpread] = field(default_factory=list)  # all tensors, most unstable first

    def to_dict(self, shown: int = SHOWN) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "spreads"}
        out.update(max_spread=round(self.max_spread, 6), median_spread=round(self.median_spread, 6),
                   seconds=round(self.seconds, 3), most_unstable=[s.to_dict() for s in self.spreads[:shown]])
        return out

    def summary(self, unit: str = "tensors", samples: str = "samples") -> str:
        return summary_line(self.to_dict(), unit, samples)


def summary_line(report: Mapping[str, Any], unit: str = "tensors", samples: str = "samples") -> str:
    """One line for a build summary, from ``StabilityReport.to_dict()`` (as build.json keeps it)."""
    drawn = report["subset_samples"]
    text = (f"{len(report['unstable'])} of {report['tensors']} {unit} unstable (amax moved > "
            f"{report['threshold']:.0%} over {report['subsets']} seeded half-subsets of {min(drawn)}-{max(drawn)} "
            f"{samples}); largest move {report['max_spread']:.1%}, median {report['median_spread']:.1%}")
    if report["unstable"]:
        text += ": " + ", ".join(report["unstable"][:3]) + (", ..." if len(report["unstable"]) > 3 else "")
    return text


def scale_spread(full: Mapping[str, Any], subsets: Sequence[Mapping[str, Any]], subset_samples: Sequence[int],
                 threshold: float = DEFAULT_THRESHOLD) -> StabilityReport:
    """Per tensor of ``full`` (name -> amax, a number or an array of channels), the spread of its amax over
    ``subsets`` (the same calibration on subsets of the data). Tensors whose full amax is 0 are left out."""
    if len(subsets) < 2:
        raise QuantError(f"{len(subsets)} calibration subset(s) cannot show a spread",
                         "ask for at least 2 subsets (and calibration data that fills them)")
    spreads = []
    for name, value in full.items():
        reference = np.abs(np.asarray(value, dtype=np.float64)).ravel()
        if reference.size == 0 or not np.all(np.isfinite(reference)) or reference.max() <= 0:
            continue
        found = [np.asarray(s[name], dtype=np.float64).ravel() for s in subsets if name in s]
        if len(found) < 2 or any(f.shape != reference.shape for f in found):
            continue
        stack = np.abs(np.stack(found))  # [subsets, channels]
        rel = (stack.max(axis=0) - stack.min(axis=0)) / np.maximum(reference, 1e-30)
        rel = np.where(reference > 0, rel, 0.0)
        worst = int(np.argmax(rel))
        spreads.append(TensorSpread(name, float(reference[worst] if reference.size > 1 else reference[0]),
                                    float(stack[:, worst].min()), float(stack[:, worst].max()), float(rel[worst])))
    spreads.sort(key=lambda s: -s.spread)
    values = np.array([s.spread for s in spreads]) if spreads else np.zeros(1)
    return StabilityReport(len(subsets), list(subset_samples), threshold, len(spreads),
                           [s.tensor for s in spreads if s.spread > threshold], float(values.max()),
                           float(np.median(values)), spreads=spreads)

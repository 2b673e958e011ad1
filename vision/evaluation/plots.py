"""Matplotlib pictures for evaluation results (headless, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from quant_common.atomic import staged_file
from vision.evaluation.evaluate import EvalResult


def per_class_chart(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Horizontal bars of per-class mAP50-95 and mAP50, overall values in the title."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry to disturb

    names = [c.name for c in result.per_class]
    fig = Figure(figsize=(7, 0.35 * len(names) + 1.5))
    ax = fig.subplots()
    positions = range(len(names))
    ax.barh([p + 0.2 for p in positions], [c.map50 for c in result.per_class], height=0.4, label="mAP50")
    ax.barh([p - 0.2 for p in positions], [c.map50_95 for c in result.per_class], height=0.4, label="mAP50-95")
    ax.set_yticks(list(positions), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(f"{Path(result.artifact).name or 'model'}: mAP50-95 {result.map50_95:.4f}, mAP50 {result.map50:.4f}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with staged_file(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
    return Path(path)

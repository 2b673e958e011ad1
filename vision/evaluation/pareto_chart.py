"""The accuracy/latency chart of a comparison: every row (and every candidate a mixed-precision search measured) as
mAP50-95 against p50 latency, the Pareto front drawn through them, the budget as a line, labels that do not
overlap each other, the markers or the axes' edge (placed greedily around each point, with a leader line when moved
away from it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quant_common.search import pareto_front

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation


@dataclass(frozen=True)
class ChartPoint:
    label: str
    latency_ms: float
    map50_95: float
    colour: str = "#1f77b4"
    marker: str = "o"  # "o" ONNX Runtime, "s" OpenVINO
    labelled: bool = True  # False: a searched candidate, drawn small and unlabelled
    highlight: bool = False  # the recommended row


_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_RADII = (7, 16, 28, 42, 60, 80, 104)  # points


def pareto_figure(points: Sequence[ChartPoint], title: str, budget_map: float | None = None) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    front = pareto_front([(-p.map50_95, p.latency_ms) for p in points])
    steps = sorted((points[i].latency_ms, points[i].map50_95) for i in front)
    if steps:
        ax.step([s[0] for s in steps], [s[1] for s in steps], where="post", color="#bbbbbb", linewidth=1.2,
                zorder=1, label="Pareto front")
    for p in points:
        if p.labelled:
            ax.scatter([p.latency_ms], [p.map50_95], s=90 if p.highlight else 45, c=p.colour, marker=p.marker,
                       edgecolors="k" if p.highlight else "none", linewidths=1.5, zorder=3)
        else:
            ax.scatter([p.latency_ms], [p.map50_95], s=18, facecolors="none", edgecolors="#888888", zorder=2)
    if any(not p.labelled for p in points):
        ax.scatter([], [], s=18, facecolors="none", edgecolors="#888888", label="searched candidate")
    ax.scatter([], [], marker="o", c="#666666", label="ONNX Runtime")
    if any(p.marker == "s" for p in points):
        ax.scatter([], [], marker="s", c="#666666", label="OpenVINO")
    if budget_map is not None:
        ax.axhline(budget_map, color="#d62728", linestyle=":", linewidth=1, label="accuracy budget")
    xs, ys = [p.latency_ms for p in points], [p.map50_95 for p in points] + ([budget_map] if budget_map else [])
    span_x, span_y = max(max(xs) - min(xs), 1e-3), max(max(ys) - min(ys), 1e-3)
    ax.set_xlim(max(0.0, min(xs) - 0.25 * span_x), max(xs) + 0.35 * span_x)
    ax.set_ylim(min(ys) - 0.25 * span_y, max(ys) + 0.25 * span_y)
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel("mAP50-95")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    place_labels(fig, ax, [p for p in points if p.labelled], [] if budget_map is None else [budget_map])
    return fig


def place_labels(fig: Figure, ax: Axes, points: Sequence[ChartPoint], lines_y: Sequence[float] = ()
                 ) -> list[Annotation]:
    """One annotation per point at the first offset (nearest first) where it overlaps no placed label, no marker,
    no horizontal line at ``lines_y``, the legend or the axes' edge; the last offset tried where none is free."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    legend = ax.get_legend()
    blocked = [legend.get_window_extent(renderer)] if legend is not None else []
    dpi_scale = fig.dpi / 72.0
    for p in points:
        x, y = ax.transData.transform((p.latency_ms, p.map50_95))
        blocked.append(Bbox.from_extents(x - 6 * dpi_scale, y - 6 * dpi_scale, x + 6 * dpi_scale, y + 6 * dpi_scale))
    for y_line in lines_y:
        y = ax.transData.transform((0.0, y_line))[1]
        blocked.append(Bbox.from_extents(axes_box.x0, y - 1.5 * dpi_scale, axes_box.x1, y + 1.5 * dpi_scale))
    placed = []
    # crowded points first: they have the fewest free places
    span_x = max(max(p.latency_ms for p in points) - min(p.latency_ms for p in points), 1e-9) if points else 1.0
    span_y = max(max(p.map50_95 for p in points) - min(p.map50_95 for p in points), 1e-9) if points else 1.0
    order = sorted(points, key=lambda p: -sum(abs(q.latency_ms - p.latency_ms) < 0.08 * span_x
                                              and abs(q.map50_95 - p.map50_95) < 0.08 * span_y for q in points))
    for p in order:
        annotation = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                if annotation is not None:
                    annotation.remove()
                annotation = ax.annotate(
                    p.label, (p.latency_ms, p.map50_95), xytext=(dx * radius, dy * radius), textcoords="offset points",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center", fontsize=7.5,
                    fontweight="bold" if p.highlight else "normal", zorder=4,
                    arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6} if radius > _RADII[0] else None)
                box = annotation.get_window_extent(renderer).expanded(1.04, 1.15)
                inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                          and box.y1 <= axes_box.y1)
                if inside and not any(box.overlaps(other) for other in blocked):
                    break
            else:
                continue
            break
        assert annotation is not None
        blocked.append(annotation.get_window_extent(renderer))
        placed.append(annotation)
    return placed

"""Render a ``CompareResult``: pictures (matplotlib, no pyplot), ``report.md`` and a self-contained ``report.html``.

Pictures: per-tensor |x| histograms with each calibrator's threshold, per-layer SQNR ranked, mAP bars and
latency bars. The html embeds the pictures (base64) so it opens anywhere; the markdown links the PNG files.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant_common.atomic import atomic_write_bytes, atomic_write_text
from vision.calibration.calibrators import CALIBRATOR_NAMES
from vision.calibration.stats import TensorStats
from vision.evaluation.pareto_chart import ChartPoint, pareto_figure
from vision.evaluation.results import CompareResult, Variant
from vision.regions import count_by_region, regions_from_dicts

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Threshold colours, given to calibrators in the table's order (a new calibrator takes the next one).
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _colour(method: str) -> str:
    if method not in CALIBRATOR_NAMES:
        return "k"
    return _PALETTE[CALIBRATOR_NAMES.index(method) % len(_PALETTE)]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def histogram_figure(histograms: Mapping[str, TensorStats], amax: Mapping[str, Mapping[str, float]]) -> Figure:
    from matplotlib.figure import Figure

    names = list(histograms)
    cols = 2
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(11, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, names, strict=False):
        stats = histograms[name]
        hist, edges = stats.hist, stats.edges
        # coarsen to ~256 steps for readability (one artist: 256 bar patches per panel took seconds to lay out);
        # thresholds are drawn exactly
        factor = max(1, len(hist) // 256)
        usable = len(hist) // factor * factor
        counts = hist[:usable].reshape(-1, factor).sum(axis=1)
        ax.stairs(np.maximum(counts, 0.5), edges[:usable + 1:factor], fill=True, color="#999999")
        ax.set_yscale("log")
        for method, values in amax.items():
            if name in values:
                ax.axvline(values[name], color=_colour(method), linestyle="--", linewidth=1.2,
                           label=f"{method} {values[name]:.3g}")
        ax.set_title(name if len(name) < 48 else "…" + name[-47:], fontsize=8)
        ax.set_xlabel("|x|", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def sqnr_figure(layer_errors: Sequence[Mapping[str, Any]], limit: int = 30) -> Figure:
    from matplotlib.figure import Figure

    top = list(layer_errors[:limit])
    fig = Figure(figsize=(9, 0.28 * len(top) + 1.2))
    ax = fig.subplots()
    labels = [e["node"] if len(e["node"]) < 40 else "…" + e["node"][-39:] for e in top]
    ax.barh(range(len(top)), [e["added_db"] for e in top], color="#d62728", label="SQNR lost in the layer (dB)")
    ax.barh(range(len(top)), [min(e["sqnr_db"], 60.0) for e in top], color="#1f77b4", alpha=0.3,
            label="output SQNR (dB, accumulated)")
    ax.set_yticks(range(len(top)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("dB")
    ax.set_title("Per-layer quantization error, most damaging first")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def bars_figure(result: CompareResult) -> tuple[Figure, Figure]:
    """mAP and latency per variant as horizontal bars: the names sit on the y axis, one per line, never on top of
    each other however many variants there are."""
    from matplotlib.figure import Figure

    names = [v.name for v in result.variants]
    y = np.arange(len(names))
    height = 0.35 * len(names) + 1.3
    fig_map = Figure(figsize=(8, height))
    ax = fig_map.subplots()
    ax.barh(y - 0.2, [v.map50_95 for v in result.variants], height=0.4, label="mAP50-95")
    ax.barh(y + 0.2, [v.map50 for v in result.variants], height=0.4, label="mAP50")
    low = min(v.map50_95 for v in result.variants)
    ax.set_xlim(max(0.0, low - 0.1), 1.0)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"Accuracy on {result.images} images")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    fig_map.tight_layout()
    fig_lat = Figure(figsize=(8, height))
    ax = fig_lat.subplots()
    ax.barh(y, [v.latency_ms for v in result.variants], color="#ff7f0e")
    for yi, v in zip(y, result.variants, strict=True):
        ax.text(v.latency_ms, yi, f" {v.latency_ms:.1f} ms ×{v.speedup:.2f}", va="center", fontsize=7)
    ax.set_xlim(0, max(v.latency_ms for v in result.variants) * 1.3)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_title(result.device, fontsize=8)
    fig_lat.tight_layout()
    return fig_map, fig_lat


def pareto_points(result: CompareResult) -> list[ChartPoint]:
    """Every row, labelled, and every candidate the mixed-precision searches measured, unlabelled."""
    pick = result.recommendation.get("variant")
    points = [ChartPoint(v.name, v.latency_ms, v.map50_95, _variant_colour(v.name, v.calibrator),
                         "s" if v.runtime == "openvino" else "o", highlight=v.name == pick) for v in result.variants]
    for runtime, search in result.mixed.items():
        if isinstance(search, dict) and "candidates" in search:
            points += [ChartPoint(f"{runtime} candidate {i}", c["latency_ms"], c["map50_95"],
                                  marker="s" if runtime == "openvino" else "o", labelled=False)
                       for i, c in enumerate(search["candidates"]) if i]
    return points


def _variant_colour(name: str, calibrator: str | None) -> str:
    if name.startswith("FP32"):
        return "#555555"
    if name.startswith("INT8-mixed"):
        return "#ff7f0e"  # in no calibrator's colour
    return _colour(calibrator or "")


def _table_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "runtime", "mAP50-95", "mAP50", "Δ mAP50-95 (pts) [95 %]", "Δ mAP50 (pts) [95 %]",
              "latency p50 (ms)", "speed-up", "layers kept float", "Pareto front"]
    rows = [[r["variant"], r["runtime"], f"{r['map50_95']:.4f}", f"{r['map50']:.4f}",
             delta_text(r["delta_map50_95"], r["delta_map_ci95"]), delta_text(r["delta_map50"], r["delta_map50_ci95"]),
             f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}×", str(r["excluded_layers"]),
             "recommended" if r["recommended"] else "yes" if r["pareto"] else ""]
            for r in result.table()]
    return header, rows


def delta_text(value: float, ci: Sequence[float] | None, compact: bool = False) -> str:
    """``-1.23 [-1.60, -0.85]``: a Δ in points with its 95 % interval (where one was measured); ``compact``
    (an 80-column terminal table): ``-1.23 [-1.6,-0.9]``, the interval to a tenth of a point."""
    if ci is None:
        return f"{value:+.2f}"
    return f"{value:+.2f} [{ci[0]:+.1f},{ci[1]:+.1f}]" if compact else f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def float_summary(result: CompareResult, variant: Variant) -> str:
    """A mixed variant's float layers collapsed by region: ``head 19, model.3–model.4 26`` rather than 45 names."""
    regions = regions_from_dicts(result.mixed.get("regions", []))
    counts = count_by_region(variant.excluded, regions, result.mixed.get("head", []))
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


def _summary_lines(result: CompareResult) -> list[str]:
    mixed = result.mixed
    lines = [f"Model `{Path(result.model).name}`, {result.images} evaluation images, {result.calib_images} "
             f"calibration images; {result.device}; latencies are medians of one interleaved loop over every row "
             "and candidate."]
    verdict = result.recommendation
    if verdict:
        lines.append(f"**Recommended: {verdict['variant']}**: {verdict['reason']}.")
    for v in result.variants:
        if not v.name.startswith("INT8-mixed"):
            continue
        search = mixed.get(v.runtime, {})
        regions = ", ".join(f"`{r}`" for r in v.regions) or "none (the uniform model meets the budget)"
        lines.append(f"{v.name}: base calibrator **{mixed.get('base_calibrator')}**, budget {mixed.get('budget')} "
                     f"mAP50-95 points ({'met' if search.get('met') else 'NOT met'}"
                     + (f", loss {search['delta']:.2f} [{search['delta_map_ci95'][0]:.2f}, "
                        f"{search['delta_map_ci95'][1]:.2f}] under rule {search['rule']}"
                        if search.get("delta_map_ci95") else "") + "), "
                     f"{len(search.get('candidates', [])) - 1} candidate(s) measured; float regions: {regions}; "
                     f"{len(v.excluded)} nodes float by region: {float_summary(result, v)}.")
    lines.append("The detection head's all-anchor part (DFL, box decode, class Sigmoid, Concat) stays float in every "
                 "INT8 variant (`head` above).")
    lines.append(f"Δ columns: mAP points against FP32 with the 95 % interval of a seeded paired bootstrap over the "
                 f"{result.images} images (both models scored on the same resampled images); an interval that "
                 "contains 0 means the difference is within what these images can tell apart.")
    return lines


def _inline_html(line: str) -> str:
    """The markdown a summary line uses (``**bold**``, ```code```) as HTML, everything else escaped."""
    text = html.escape(line)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def write_reports(result: CompareResult, histograms: Mapping[str, TensorStats], out: Path) -> list[Path]:
    """Write the pictures, report.md and report.html into ``out``; returns the paths written."""
    fig_map, fig_lat = bars_figure(result)
    budget = result.mixed.get("budget")
    fp32 = result.variants[0].map50_95
    pictures = {
        "report_pareto.png": _png(pareto_figure(pareto_points(result), f"mAP50-95 vs latency: {result.device}",
                                                fp32 - budget / 100.0 if budget is not None else None)),
        "report_map.png": _png(fig_map),
        "report_latency.png": _png(fig_lat),
        "report_histograms.png": _png(histogram_figure(histograms, result.amax)),
        "report_sqnr.png": _png(sqnr_figure(result.layer_errors)),
    }
    paths = [atomic_write_bytes(out / name, data) for name, data in pictures.items()]
    header, rows = _table_rows(result)
    captions = {"report_pareto.png": "Accuracy against latency, Pareto front",
                "report_map.png": "mAP per variant", "report_latency.png": "Latency per variant",
                "report_histograms.png": "Activation histograms with each calibrator's threshold",
                "report_sqnr.png": "Per-layer quantization error (SQNR), ranked"}
    md = ["# FP32 vs INT8 comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", *_summary_lines(result), ""]
    md += [f"## {caption}\n\n![{caption}]({name})\n" for name, caption in captions.items()]
    paths.append(atomic_write_text(out / "report.md", "\n".join(md)))
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>"
    summary = "".join(f"<p>{_inline_html(line)}</p>" for line in _summary_lines(result))
    images = "".join(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{base64.b64encode(pictures[name]).decode()}'>"
                     for name, caption in captions.items())
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>FP32 vs INT8</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "td:first-child,th:first-child{text-align:left;white-space:nowrap}"
            "img{max-width:100%}</style></head><body><h1>FP32 vs INT8 comparison</h1>"
            f"{table}{summary}{images}</body></html>")
    paths.append(atomic_write_text(out / "report.html", page))
    return paths

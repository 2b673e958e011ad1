"""Accuracy-budgeted mixed precision: keep the costliest linears in higher precision.

Sensitivity on the ``search`` split (never an ``eval`` text): each precision unit
(``llm_quant.calibration.exclusions``: qkv, o_proj, gate+up, down_proj of one layer) is quantized alone inside its
full-precision layer, fed the full-precision model's own input, and the relative error it adds to the layer output
is recorded (one capture pass plus one layer run per unit; a perplexity probe per unit would cost ~100x more on
SmolLM2). Units are then kept in higher precision in order of that error per parameter (``rank_units``), the
smallest count whose search-split perplexity change meets ``budget * margin`` under the budget rule (``"ci"``: the
upper end of its paired 95 % interval over token blocks, ``llm_quant.evaluation.perplexity.delta_estimate``;
``"point"``: the measured change), found by the ranked-prefix search shared with vision (``quant_common.search``:
1, 2, 4, ... units, then bisection). The margin leaves room for text the search never sees. Turning quantizers off keeps SmoothQuant/AWQ pre-quant scales applied,
so each probe is an exact full-precision linear; the final model is re-calibrated with those linears excluded from
the start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_quant.calibration.exclusions import (
    decoder_layers,
    decoder_linears,
    precision_units,
    quantized_weight_share,
)
from llm_quant.evaluation.perplexity import Perplexity, delta_estimate, perplexity
from quant_common.errors import require
from quant_common.progress import track
from quant_common.search import DEFAULT_BUDGET_RULE, search_ranked_prefix, within_budget
from quant_common.uncertainty import Estimate

# The search's target is ``budget * margin``: room for text the search never sees. Under the "point" rule (the
# measured change must meet the target) a margin of 0.7 was measured to be needed; under the "ci" rule (the upper
# end of the change's 95 % interval must) the interval itself is that room (docs/llm.md, "Reading the numbers").
SEARCH_MARGINS = {"point": 0.7, "ci": 1.0}


def _enabled_quantizers(model: Any, module: str) -> list[Any]:
    prefix = module + "."
    return [m for n, m in model.named_modules()
            if n.startswith(prefix) and n.endswith("_quantizer") and getattr(m, "is_enabled", False)]


class InFullPrecision:
    """Context manager: disable exactly the enabled quantizers of ``modules`` (layers or linears), restore on exit."""

    def __init__(self, model: Any, modules: list[str]) -> None:
        self.quantizers = [q for module in modules for q in _enabled_quantizers(model, module)]

    def __enter__(self) -> None:
        for q in self.quantizers:
            q.disable()

    def __exit__(self, *exc: object) -> None:
        for q in self.quantizers:
            q.enable()


@dataclass
class SearchResult:
    budget_pct: float
    target_pct: float
    ppl_ref: float
    ppl_uniform: float
    ppl_final: float
    excluded: list[str] = field(default_factory=list)  # HF linear names kept in higher precision
    excluded_units: list[str] = field(default_factory=list)  # the precision units chosen (model.layers.3.down)
    unit_error: dict[str, float] = field(default_factory=dict)  # relative layer-output error each unit adds
    probes: int = 0  # search-split perplexity measurements, the uniform one included
    met: bool = True
    # {"excluded": k top units, "loss": ppl Δ %, "loss_ci95": [lo, hi]} per probe
    trials: list[dict[str, Any]] = field(default_factory=list)
    quantized_weight_share: float = 1.0  # of decoder-linear parameters, with ``excluded`` kept in higher precision
    rule: str = DEFAULT_BUDGET_RULE  # quant_common.search.BUDGET_RULES
    margin: float = 1.0  # target_pct = budget_pct * margin
    delta_pct: float = 0.0  # search-split change of the chosen set, with its paired 95 % interval
    delta_pct_ci95: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, text: str) -> dict[str, Any]:
        """The search split's change with the chosen linears kept, its interval, and how it met the budget."""
        return {"text": text, "delta_pct": round(self.delta_pct, 3), "delta_pct_ci95": self.delta_pct_ci95,
                "target_pct": self.target_pct, "rule": self.rule, "margin": self.margin, "met": self.met,
                "units_kept": len(self.excluded_units), "probes": self.probes}


def _capture(quantized: Any, batch: Any, layers: list[str], modules: dict[str, Any]) -> dict[str, tuple]:
    """Each layer's (args, kwargs, output) in a full-precision pass of ``batch``."""
    captured: dict[str, tuple[Any, Any, Any]] = {}
    handles = []
    for name in layers:
        def pre(module: Any, args: Any, kwargs: Any, name: str = name) -> None:
            captured[name] = (args, dict(kwargs), None)

        def post(module: Any, args: Any, kwargs: Any, output: Any, name: str = name) -> None:
            a, k, _ = captured[name]
            captured[name] = (a, k, output[0] if isinstance(output, tuple) else output)

        handles.append(modules[name].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(modules[name].register_forward_hook(post, with_kwargs=True))
    try:
        quantized(batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def unit_errors(quantized: Any, windows: Any, units: dict[str, list[str]], batch_size: int = 1) -> dict[str, float]:
    """Relative layer-output error of each precision unit quantized alone, fed the full-precision model's input.

    A unit that is a whole layer (``model.layers.3`` -> [``model.layers.3``]) measures that layer quantized.
    """
    torch = require("torch", purpose="layer search")
    modules = dict(quantized.named_modules())
    all_layers = decoder_layers(quantized)
    layer_of = {unit: next(layer for layer in all_layers if f"{members[0]}.".startswith(f"{layer}."))
                for unit, members in units.items()}
    layers = sorted(set(layer_of.values()), key=all_layers.index)
    quantizers = {unit: [q for m in members for q in _enabled_quantizers(quantized, m)]
                  for unit, members in units.items()}
    errors = dict.fromkeys(units, 0.0)
    norms = dict.fromkeys(units, 0.0)
    device = next(quantized.parameters()).device
    for batch in track(list(windows.split(batch_size)), "linear sensitivity"):
        with torch.no_grad(), InFullPrecision(quantized, layers):
            captured = _capture(quantized, batch.to(device), layers, modules)
            for unit, layer in layer_of.items():
                args, kwargs, expected = captured[layer]
                for q in quantizers[unit]:
                    q.enable()
                try:
                    got = modules[layer](*args, **kwargs)
                finally:
                    for q in quantizers[unit]:
                        q.disable()
                got = got[0] if isinstance(got, tuple) else got
                errors[unit] += float((got.float() - expected.float()).pow(2).sum())
                norms[unit] += float(expected.float().pow(2).sum())
    return {unit: errors[unit] / max(norms[unit], 1e-30) for unit in units}


def layer_errors(quantized: Any, windows: Any, layers: list[str], batch_size: int = 1) -> dict[str, float]:
    """Relative output error of each quantized decoder layer (whole-layer units)."""
    return unit_errors(quantized, windows, {layer: [layer] for layer in layers}, batch_size)


def rank_units(quantized: Any, units: dict[str, list[str]], unit_error: dict[str, float]) -> list[str]:
    """Units by error per parameter, highest first: keeping the most error per weight kept in float maximizes the
    quantized share a budget leaves (int4_awq on SmolLM2 at share 0.8: eval-split Δ +14.5 % vs +20.4 % ranked by
    error alone, README)."""
    linears = decoder_linears(quantized)
    size = {unit: sum(linears[m].weight.numel() for m in members) for unit, members in units.items()}
    return sorted(units, key=lambda unit: unit_error[unit] / max(size[unit], 1), reverse=True)


def search_exclusions(quantized: Any, windows: Any, ref: Perplexity, budget_pct: float, batch_size: int = 1,
                      may_exclude: bool = True, rule: str = DEFAULT_BUDGET_RULE,
                      margin: float | None = None) -> SearchResult:
    """Smallest set of most-sensitive precision units to keep in higher precision so the search-split perplexity
    change meets ``budget_pct * margin`` under ``rule`` (``ref``: the full-precision model scored on ``windows``).
    Unmet even with every unit kept: the prefix with the lowest change tried, ``met`` False. ``may_exclude=False``
    (a format that cannot keep linears in higher precision): only the uniform probe.
    """
    margin = SEARCH_MARGINS[rule] if margin is None else margin
    target_pct = budget_pct * margin
    measured: dict[int, tuple[float, Estimate]] = {}
    units = precision_units(quantized)

    def members(chosen: list[str]) -> list[str]:
        return [linear for unit in chosen for linear in units[unit]]

    def increase_pct(chosen: list[str]) -> Estimate:
        with InFullPrecision(quantized, members(chosen)):
            probe = perplexity(quantized, windows, batch_size=batch_size, description="linear search")
        measured[len(chosen)] = (probe.ppl, delta_estimate(ref, probe))
        return measured[len(chosen)][1]

    uniform_pct = increase_pct([])
    uniform = measured[0][0]
    result = SearchResult(budget_pct, target_pct, ref.ppl, uniform, uniform, probes=1,
                          trials=[{"excluded": 0, "loss": uniform_pct.value, "loss_ci95": uniform_pct.ci_list(3)}],
                          quantized_weight_share=quantized_weight_share(quantized), rule=rule, margin=margin,
                          delta_pct=uniform_pct.value, delta_pct_ci95=uniform_pct.ci_list(3))
    if within_budget(uniform_pct, target_pct, rule):
        return result
    result.met = False
    if not may_exclude:
        return result
    result.unit_error = {k: round(v, 10) for k, v in unit_errors(quantized, windows, units, batch_size).items()}
    order = list(units)
    ranked = rank_units(quantized, units, result.unit_error)
    found = search_ranked_prefix(ranked, increase_pct, budget=target_pct, baseline=uniform_pct, rule=rule)
    result.excluded_units = sorted(found.excluded, key=order.index)
    result.excluded = members(result.excluded_units)
    result.ppl_final, chosen = measured[len(found.excluded)]
    result.delta_pct, result.delta_pct_ci95 = chosen.value, chosen.ci_list(3)
    result.probes, result.met, result.trials = found.probes, found.met, found.trials
    with InFullPrecision(quantized, result.excluded):
        result.quantized_weight_share = quantized_weight_share(quantized)
    return result

"""Accuracy-budgeted mixed precision: keep the costliest decoder layers in higher precision.

Per-layer sensitivity on the ``search`` split (never the ``eval`` split): the relative output error each
quantized decoder layer adds when fed the full-precision model's own input (one pass, see ``layer_errors``;
one perplexity probe per layer costs 15x more on SmolLM2). Layers are then kept in higher precision in that
order, the smallest count whose search-split perplexity is within ``budget * SEARCH_MARGIN`` of the reference,
found by the ranked-prefix search shared with vision (``quant_common.search``: 1, 2, 4, ... layers, then
bisection). The margin leaves room for the held-out text, which the search never sees. Turning quantizers off
keeps SmoothQuant/AWQ pre-quant scales applied, so each probe is an exact full-precision layer; the final model
is re-calibrated with those layers excluded from the start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_quant.evaluate import perplexity
from quant_common.errors import require
from quant_common.progress import track
from quant_common.search import search_ranked_prefix

SEARCH_MARGIN = 0.7


def decoder_layers(model: Any) -> list[str]:
    """Module names of the decoder layers (``model.layers.N``), in order."""
    torch = require("torch", purpose="layer search")
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
            return [f"{name}.{i}" for i in range(len(module))]
    return []


def _enabled_quantizers(model: Any, layer: str) -> list[Any]:
    prefix = layer + "."
    return [m for n, m in model.named_modules()
            if n.startswith(prefix) and n.endswith("_quantizer") and getattr(m, "is_enabled", False)]


class _LayersInFullPrecision:
    """Context manager: disable exactly the enabled quantizers of ``layers``, restore them on exit."""

    def __init__(self, model: Any, layers: list[str]) -> None:
        self.quantizers = [q for layer in layers for q in _enabled_quantizers(model, layer)]

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
    excluded: list[str] = field(default_factory=list)
    layer_error: dict[str, float] = field(default_factory=dict)  # relative output error each layer adds
    probes: int = 0  # search-split perplexity measurements, the uniform one included
    met: bool = True
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"excluded": k top layers, "loss": ppl Δ %}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_errors(quantized: Any, windows: Any, layers: list[str], batch_size: int = 1,
                 relative: bool = True) -> dict[str, float]:
    """Relative output error of each quantized decoder layer, fed the full-precision model's own input.

    One full-precision pass records every layer's inputs and outputs (hooks); each quantized layer then runs
    on those inputs. Cost: about two forward passes, instead of one perplexity probe per layer.
    """
    torch = require("torch", purpose="layer search")
    modules = dict(quantized.named_modules())
    errors = dict.fromkeys(layers, 0.0)
    norms = dict.fromkeys(layers, 0.0)
    device = next(quantized.parameters()).device
    for batch in track(list(windows.split(batch_size)), "layer sensitivity"):
        captured: dict[str, tuple[Any, Any, Any]] = {}
        handles = []
        for name in layers:
            def pre(module: Any, args: Any, kwargs: Any, name: str = name, store: dict = captured) -> None:
                store[name] = (args, dict(kwargs), None)

            def post(module: Any, args: Any, kwargs: Any, output: Any, name: str = name,
                     store: dict = captured) -> None:
                a, k, _ = store[name]
                store[name] = (a, k, output[0] if isinstance(output, tuple) else output)

            handles.append(modules[name].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(modules[name].register_forward_hook(post, with_kwargs=True))
        try:
            with torch.no_grad(), _LayersInFullPrecision(quantized, layers):
                quantized(batch.to(device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            for name in layers:
                args, kwargs, expected = captured[name]
                got = modules[name](*args, **kwargs)
                got = got[0] if isinstance(got, tuple) else got
                errors[name] += float((got.float() - expected.float()).pow(2).sum())
                norms[name] += float(expected.float().pow(2).sum())
    if not relative:
        return errors
    return {name: errors[name] / max(norms[name], 1e-30) for name in layers}


def search_exclusions(quantized: Any, windows: Any, ppl_ref: float, budget_pct: float,
                      batch_size: int = 1) -> SearchResult:
    """Smallest set of most-sensitive layers to keep in higher precision so search-split ppl meets the budget.

    Unmet even with every layer kept: the prefix with the lowest perplexity tried, ``met`` False.
    """
    target_pct = budget_pct * SEARCH_MARGIN
    measured: dict[int, float] = {}

    def increase_pct(layers: list[str]) -> float:
        with _LayersInFullPrecision(quantized, layers):
            ppl = perplexity(quantized, windows, batch_size=batch_size, description="layer search").ppl
        measured[len(layers)] = ppl
        return 100.0 * (ppl - ppl_ref) / ppl_ref

    uniform_pct = increase_pct([])
    uniform = measured[0]
    result = SearchResult(budget_pct, target_pct, ppl_ref, uniform, uniform, probes=1,
                          trials=[{"excluded": 0, "loss": uniform_pct}])
    if uniform_pct <= target_pct:
        return result
    layers = decoder_layers(quantized)
    result.layer_error = {k: round(v, 8) for k, v in layer_errors(quantized, windows, layers, batch_size).items()}
    ranked = sorted(layers, key=lambda name: result.layer_error[name], reverse=True)
    found = search_ranked_prefix(ranked, increase_pct, budget=target_pct, baseline=uniform_pct)
    result.excluded = sorted(found.excluded, key=layers.index)
    result.ppl_final = measured[len(found.excluded)]
    result.probes, result.met, result.trials = found.probes, found.met, found.trials
    return result

"""Perplexity of the reference and the quantized model on the same token windows of held-out text."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from quant_common.errors import QuantError, require
from quant_common.progress import track


@dataclass
class Perplexity:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # predicted tokens


def perplexity(model: Any, windows: Any, *, batch_size: int = 1, description: str = "perplexity") -> Perplexity:
    """Mean token NLL over ``windows`` [n, L] (each window scored independently, L-1 predictions each)."""
    torch = require("torch", purpose="perplexity")
    if len(windows) == 0:
        raise QuantError("no held-out text to evaluate on", "pass a longer --text file or lower --eval-seq-len")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    batches = list(windows.split(batch_size))
    with torch.no_grad():
        for batch in track(batches, description, total=len(batches)):
            batch = batch.to(device)
            logits = model(batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += targets.numel()
    nll = total / count
    return Perplexity(math.exp(nll), nll, count)


@dataclass
class EvalReport:
    ppl_ref: float
    ppl_quant: float
    delta_pct: float
    tokens: int
    windows: int
    seq_len: int
    qformat: str
    text: str  # which text ppl_ref/ppl_quant/delta_pct are on
    quantized_weight_share: float  # of decoder-linear parameters stored quantized (1.0 uniform)
    linears_kept_high_precision: int
    exclude_modules: list[str]
    heldout: dict[str, Any] | None = None  # the same on a domain neither calibration nor the search saw
    search: dict[str, Any] | None = None  # --accuracy-budget: its text, search-split Δ, units kept, probes, met
    sq_activations: str | None = None  # int8_sq: per_tensor or per_token
    smoothquant: dict[str, Any] | None = None  # int8_sq: alpha per input group (llm_quant.calibration.smoothing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(ref: Perplexity, quant: Perplexity, **extra: Any) -> EvalReport:
    delta = 100.0 * (quant.ppl - ref.ppl) / ref.ppl
    return EvalReport(ppl_ref=round(ref.ppl, 4), ppl_quant=round(quant.ppl, 4), delta_pct=round(delta, 3),
                      tokens=quant.tokens, **extra)

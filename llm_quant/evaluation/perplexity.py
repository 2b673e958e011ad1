"""Perplexity of the reference and the quantized model on the same token windows of held-out text, and the change
between them with its 95 % interval.

The interval is a seeded paired bootstrap (``quant_common.uncertainty``) over blocks of ``CI_BLOCK`` consecutive
predicted tokens of the evaluation windows: both models' negative log-likelihoods of the same blocks are resampled
together. Blocks, not whole windows: the bundled corpus' eval split is one 512-token window and a few paragraphs
of ``--text`` are a handful, too few units to resample; the block length is the shortest whose interval no longer
widens with longer blocks on SmolLM2 (docs/llm.md, "Reading the numbers"), so neighbouring blocks are close to
independent for this purpose.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from quant_common.errors import QuantError, require
from quant_common.progress import track
from quant_common.uncertainty import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, paired_ratio_delta_pct

CI_BLOCK = 64  # predicted tokens per bootstrap unit


@dataclass
class Perplexity:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # predicted tokens
    token_nll: Any = field(default=None, repr=False, compare=False)  # [windows, L-1] float64, for intervals


def block_sums(token_nll: np.ndarray, block: int = CI_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(NLL sum, token count) of each bootstrap unit: consecutive ``block`` predicted tokens of one window (a
    window's last block may be shorter)."""
    sums, counts = [], []
    for row in np.atleast_2d(token_nll):
        for start in range(0, len(row), block):
            part = row[start:start + block]
            sums.append(float(part.sum()))
            counts.append(len(part))
    return np.asarray(sums), np.asarray(counts, dtype=np.float64)


def delta_estimate(ref: Perplexity, quant: Perplexity, *, block: int = CI_BLOCK, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED) -> Estimate:
    """Perplexity change in % of ``quant`` over ``ref`` (scored on the same windows) with its paired 95 % interval
    over token blocks."""
    if ref.token_nll is None or quant.token_nll is None or np.shape(ref.token_nll) != np.shape(quant.token_nll):
        raise QuantError("the two perplexities were not scored token by token on the same windows",
                         "score both models with llm_quant.evaluation.perplexity on the same windows")
    ref_sums, counts = block_sums(ref.token_nll, block)
    quant_sums, _ = block_sums(quant.token_nll, block)
    return paired_ratio_delta_pct(ref_sums, quant_sums, counts, resamples=resamples, seed=seed)


def perplexity(model: Any, windows: Any, *, batch_size: int = 1, description: str = "perplexity") -> Perplexity:
    """Mean token NLL over ``windows`` [n, L] (each window scored independently, L-1 predictions each)."""
    torch = require("torch", purpose="perplexity")
    if len(windows) == 0:
        raise QuantError("no held-out text to evaluate on", "pass a longer --text file or lower --eval-seq-len")
    device = next(model.parameters()).device
    rows = []
    batches = list(windows.split(batch_size))
    with torch.no_grad():
        for batch in track(batches, description, total=len(batches)):
            batch = batch.to(device)
            logits = model(batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                     reduction="none")
            rows.append(loss.view(targets.shape).double().cpu().numpy())
    token_nll = np.concatenate(rows)
    nll = float(token_nll.sum()) / token_nll.size
    return Perplexity(math.exp(nll), nll, int(token_nll.size), token_nll)


def delta_row(text: str, ref: Perplexity, quant: Perplexity, budget: float | None = None) -> dict[str, Any]:
    """One text's perplexity change with its 95 % interval, as build.json and ``--json`` carry it; with a budget,
    whether the measured change held it (``budget_held``) and whether even the interval's upper end did
    (``budget_held_ci``)."""
    est = delta_estimate(ref, quant)
    row: dict[str, Any] = {"text": text, "tokens": quant.tokens, "ppl_ref": round(ref.ppl, 4),
                           "ppl_quant": round(quant.ppl, 4), "delta_pct": round(est.value, 3),
                           "delta_pct_ci95": est.ci_list(3), "ci_units": est.units}
    if budget is not None:
        row["budget_held"] = bool(est.value <= budget)
        row["budget_held_ci"] = bool(est.ci95[1] <= budget)
    return row


def budget_line(budget: float, rows: dict[str, dict[str, Any]]) -> str:
    """The one summary line: each text where the change exceeds the budget, by name, or that it held on all."""
    exceeded = [split for split, row in rows.items() if not row["budget_held"]]
    unsure = [split for split, row in rows.items() if row["budget_held"] and not row["budget_held_ci"]]

    def show(split: str) -> str:
        row = rows[split]
        lo, hi = row["delta_pct_ci95"]
        return f"{split} {row['delta_pct']:+.2f} % [{lo:+.2f}, {hi:+.2f}] ({row['text']})"

    held = [split for split in rows if split not in exceeded]
    if exceeded:
        text = f"accuracy budget {budget:g} %: EXCEEDED on " + "; ".join(show(split) for split in exceeded)
        text += f"; held on {', '.join(held)}" if held else ""
    else:
        text = f"accuracy budget {budget:g} %: held on {', '.join(rows) or 'no held-out text'}"
    if unsure:  # held as measured, but the interval reaches past the budget
        text += "; its 95 % interval reaches past the budget on " + "; ".join(show(split) for split in unsure)
    return text


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
    delta_pct_ci95: list[float] = field(default_factory=list)  # paired 95 % interval of delta_pct
    ci: dict[str, Any] = field(default_factory=dict)  # how the intervals were made (units, resamples, seed)
    budget_held: bool | None = None  # --accuracy-budget: on ``text`` (heldout and search carry their own)
    budget_held_ci: bool | None = None
    budget_summary: str | None = None  # the one line naming each text where the change exceeds the budget
    calibration: dict[str, Any] = field(default_factory=dict)  # samples/tokens calibration actually consumed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(ref: Perplexity, quant: Perplexity, budget: float | None = None, **extra: Any) -> EvalReport:
    row = delta_row("", ref, quant, budget)
    return EvalReport(ppl_ref=row["ppl_ref"], ppl_quant=row["ppl_quant"], delta_pct=row["delta_pct"],
                      tokens=quant.tokens, delta_pct_ci95=row["delta_pct_ci95"],
                      ci={"units": f"blocks of {CI_BLOCK} predicted tokens", "count": row["ci_units"],
                          "resamples": DEFAULT_RESAMPLES, "seed": DEFAULT_SEED, "paired": True},
                      budget_held=row.get("budget_held"), budget_held_ci=row.get("budget_held_ci"), **extra)

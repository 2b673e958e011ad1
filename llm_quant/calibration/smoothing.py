"""SmoothQuant scales chosen per layer, shared by the linears that read the same input.

modelopt's SmoothQuant uses one global alpha and gives every linear its own pre-quant scale. TensorRT-LLM fuses
q/k/v (``attention.qkv``) and gate/up (``mlp.fc`` + ``mlp.gate``): linears reading one input must share one scale,
and for per-token SmoothQuant that scale is folded into the RMSNorm before them. modelopt's export otherwise
averages differing scales of a fused group and re-quantizes the weights (``preprocess_linear_fusion``), so what
TensorRT-LLM runs would not be what was calibrated.

So, as the SmoothQuant and AWQ papers do, for each input group (linears fed the same tensor) and each alpha of a
grid, the group's output error on captured calibration rows is measured with the chosen activation mode, and the
alpha with the lowest error wins:

    pre_quant_scale = w_amax ** (1 - alpha) / act_amax ** alpha     (modelopt's convention: x * pre_quant_scale)

with ``act_amax`` the per-channel input amax over all calibration tokens and ``w_amax`` the per-input-channel weight
amax over the whole group. The captures ride on modelopt's own calibration pass (no extra forward pass); the search
costs one matmul per alpha and linear on ``SAMPLE_ROWS`` rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llm_quant.calibration.per_token import AMAX_EPS, QMAX, fake_quant_per_token, w8a8_input_quantizers
from quant_common.errors import require

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_ALPHA = 0.5  # the SmoothQuant paper's default, and TensorRT-LLM's own convert scripts'
SAMPLE_ROWS = 256  # calibration token rows kept per input group for the search; its cost is linear in them
_SCALE_RANGE = (1e-4, 1e4)  # modelopt's clamp of the SmoothQuant scale
_EPS = 1.0 / (1 << 31)  # modelopt: channels with act amax at or below this keep scale 1


def _torch() -> Any:
    return require("torch", purpose="SmoothQuant")


@dataclass
class SmoothingReport:
    activations: str
    searched: bool
    grid: list[float]
    alpha: dict[str, float] = field(default_factory=dict)  # input group (its linears joined by '+') -> alpha
    error: dict[str, float] = field(default_factory=dict)  # relative output error of the group at that alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Capture:
    """Hooks on the decoder linears during modelopt's calibration pass: input groups, per-channel amax, rows."""

    def __init__(self, model: Any, sample_rows: int = SAMPLE_ROWS, seed: int = 0) -> None:
        torch = _torch()
        self.linears = {name: m for name, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}
        self.base_weights = {name: m.weight.detach().clone() for name, m in self.linears.items()}
        self.groups: list[list[str]] = []
        self.amax: dict[str, Any] = {}  # group leader -> (in,) float32
        self.rows: dict[str, list[Any]] = {}
        self.sample_rows = sample_rows
        self.generator = torch.Generator().manual_seed(seed)
        self._leader: dict[str, str] = {}

    def find_groups(self, model: Any, sample: Any) -> None:
        """One short forward: linears receiving the very same input tensor form a group (q/k/v, gate/up)."""
        torch = _torch()
        seen: list[tuple[Any, list[str]]] = []

        def hook(module: Any, args: Any, name: str) -> None:
            for tensor, names in seen:
                if tensor is args[0]:
                    names.append(name)
                    return
            seen.append((args[0], [name]))

        handles = [m.register_forward_pre_hook(lambda mod, a, n=n: hook(mod, a, n)) for n, m in self.linears.items()]
        try:
            with torch.no_grad():
                model(sample)
        finally:
            for h in handles:
                h.remove()
        self.groups = [names for _, names in seen]
        self._leader = {name: names[0] for names in self.groups for name in names}

    def hooks(self, batches: int) -> list[Any]:
        """Register the capture hooks (one per group leader); the caller removes them."""
        per_batch = max(1, self.sample_rows // max(batches, 1))

        def hook(module: Any, args: Any, leader: str) -> None:
            torch = _torch()
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            amax = x.abs().amax(dim=0).cpu()
            self.amax[leader] = amax if leader not in self.amax else torch.maximum(self.amax[leader], amax)
            kept = sum(r.shape[0] for r in self.rows.setdefault(leader, []))
            take = min(per_batch, self.sample_rows - kept, x.shape[0])
            if take > 0:
                idx = torch.randperm(x.shape[0], generator=self.generator)[:take]
                self.rows[leader].append(x[idx.to(x.device)].cpu())

        return [self.linears[names[0]].register_forward_pre_hook(lambda mod, a, n=names[0]: hook(mod, a, n))
                for names in self.groups]


def fold_pre_quant_scale(weight: Any, pre_quant_scale: Any) -> Any:
    """modelopt's SmoothQuant/AWQ fold: ``w * (1 / pre_quant_scale)`` per input channel, in float32. The embedded
    runtime recomputes folds with this very function, so a weight folded here is restored bit for bit."""
    torch = _torch()
    inv = 1.0 / pre_quant_scale.to(torch.float32)
    return (weight * inv.squeeze()[None, :]).to(weight.dtype)


def _pre_quant_scale(act_amax: Any, w_amax: Any, alpha: float) -> Any:
    """modelopt's SmoothQuant scale (model_calib.smoothquant), for a group's shared weight amax."""
    scale = (w_amax.pow(1 - alpha) / act_amax.pow(alpha))
    scale = scale.masked_fill(act_amax <= _EPS, 1.0)
    return scale.clamp(*_SCALE_RANGE)


def _fake_weight(w: Any) -> Any:
    """Per-output-channel int8 fake quantization (modelopt's weight quantizer, axis 0): the per-row formula of
    ``per_token`` applied to the weight's rows."""
    return fake_quant_per_token(w, None)


def _fake_per_tensor(x: Any, pqs: Any, act_amax: Any) -> Any:
    torch = _torch()
    amax = float((act_amax * pqs).amax())
    v = x * pqs
    return torch.round(v * (QMAX / amax)).clamp(-QMAX, QMAX) * (amax / QMAX) if amax > AMAX_EPS else v * 0


def group_error(rows: Any, weights: list[Any], act_amax: Any, alpha: float, activations: str,
                refs: list[Any] | None = None) -> tuple[float, Any]:
    """Relative output error of one input group at ``alpha``; also the pre-quant scale used.
    ``refs``: the full-precision outputs ``rows @ w.T`` (computed here when not given)."""
    torch = _torch()
    w_amax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    pqs = _pre_quant_scale(act_amax, w_amax, alpha)
    xq = fake_quant_per_token(rows, pqs) if activations == "per_token" else _fake_per_tensor(rows, pqs, act_amax)
    err = norm = 0.0
    for i, w in enumerate(weights):
        ref = refs[i] if refs is not None else rows @ w.t()
        got = xq @ _fake_weight(w / pqs).t()
        err += float((got - ref).pow(2).sum())
        norm += float(ref.pow(2).sum())
    return err / max(norm, 1e-30), pqs


def smooth(model: Any, capture: Capture, *, activations: str, alphas: tuple[float, ...],
           scale_dtype: str | None = None) -> SmoothingReport:
    """Replace modelopt's per-linear SmoothQuant scales by one searched scale per input group, in place.

    Works on the calibrated modelopt model: each enabled W8A8 linear gets the group's ``pre_quant_scale``, its
    base weight folded by it exactly as modelopt folds (the embedded runtime recomputes that fold on load), a
    per-channel weight amax of the folded weight and the per-tensor input amax ``max(act_amax * pre_quant_scale)``.
    ``scale_dtype`` (the checkpoint dtype) rounds each scale to a value that dtype holds exactly, so the exported
    ``prequant_scaling_factor`` (and the smoother / norm fold made from it) is the scale the weights were folded
    with: any scale is a valid smoothing, a rounded one costs nothing.
    """
    torch = _torch()
    quantized = dict(w8a8_input_quantizers(model))
    report = SmoothingReport(activations=activations, searched=len(alphas) > 1, grid=list(alphas))
    for names in capture.groups:
        members = [n for n in names if n in quantized and getattr(quantized[n], "_pre_quant_scale", None) is not None]
        leader = names[0]
        if not members or leader not in capture.amax:
            continue
        # the search runs where the weights are: on the CPU it took over 130 s for an 8B model (7 alphas x 32 layers
        # of float32 fake quantization; H100, 2026-12-07 gpu_scale), on the GPU a fraction of a second per group
        device = capture.base_weights[members[0]].device
        act_amax = capture.amax[leader].to(device)
        rows = torch.cat(capture.rows[leader]).to(device)
        weights = [capture.base_weights[n].float() for n in members]
        refs = [rows @ w.t() for w in weights] if len(alphas) > 1 else None
        best: tuple[float, float, Any] | None = None
        for alpha in alphas:
            error, pqs = group_error(rows, weights, act_amax, alpha, activations, refs)
            if best is None or error < best[0]:
                best = (error, alpha, pqs)
        assert best is not None
        error, alpha, pqs = best
        pqs = pqs.cpu()
        if scale_dtype is not None:
            pqs = pqs.to(getattr(torch, scale_dtype)).float()
        key = "+".join(members)
        report.alpha[key], report.error[key] = alpha, round(error, 8)
        with torch.no_grad():
            for name in members:
                module, quantizer = capture.linears[name], quantized[name]
                stored = quantizer._pre_quant_scale
                stored.copy_(pqs.to(device=stored.device, dtype=stored.dtype).reshape(stored.shape))
                folded = fold_pre_quant_scale(capture.base_weights[name], stored)
                module.weight.copy_(folded)
                wq = module.weight_quantizer
                wq.amax = folded.float().abs().amax(dim=1, keepdim=True).reshape(wq.amax.shape).to(wq.amax.dtype)
                in_amax = (act_amax.to(stored.device) * stored.float()).amax()
                quantizer.amax = in_amax.reshape(quantizer.amax.shape).to(quantizer.amax.dtype)
    return report

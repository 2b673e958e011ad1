"""INT8 SmoothQuant (W8A8, per-token activations) prefill on the GPU: which GEMM path beats bf16.

The embedded runtime's int8_sq prefill dequantizes each int8 weight into bf16 per call, multiplies in bf16 and
applies the scales in separate fp32 passes: on an H200 the 8B shape prefilled at 0.35x bf16
(benchmarks/results/llm_runtime_gpu_int.md). This times one decoder layer of a real shape (q, k, v, o, gate, up,
down; q/k/v and gate/up sharing one activation quantization as in the model) at prefill row counts, per path:

- ``bf16``: ``x @ W.T``, the reference speed;
- ``current``: the runtime's own ``Int8WeightLinear`` (``llm_quant.runtime.cuda.linear``), dequantize + cuBLAS;
- ``int_mm``: the runtime's Triton per-token quantization, ``torch._int_mm`` on the column-major weight view
  (cuBLASLt's int8 "TN" layout), then the scales (FACTS §7 found ``_int_mm`` 3-6x slower than bf16 on an H100;
  this says whether that holds with this layout);
- ``triton``: the same quantization, then ``benchmarks/int8_gemm_triton.py``: int32 tensor-core accumulation with
  both scales in its epilogue;
- ``fp8``: FP8 per-tensor (``_scaled_mm``), for context: what the fp8 qformat pays for the same layer.

Each path's output for the gate projection is compared with the exact W8A8 result (float64 on the same int8 codes):
largest error relative to the largest output. Times are per layer, CUDA-graph replays after an L2-evicting read
(``llm_quant.runtime.cuda.kernels.time_ms``). Prints a table, writes ``int8_prefill_gpu.json``, ``.md``, ``.png``.

    python benchmarks/int8_prefill_gpu.py --out benchmarks/results [--rows 512,2048] [--shape llama-3.1-8b]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_scale import _environment  # noqa: E402
from benchmarks.llm_runtime import png_bytes, save_report  # noqa: E402

PATHS = ("bf16", "current", "int_mm", "triton", "fp8")


def _layer_weights(shape: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear of one Llama decoder layer."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
            "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}


GROUPS = {"attn": ("q", "k", "v"), "o": ("o",), "mlp": ("gate", "up"), "down": ("down",)}  # linears sharing an input


class Layer:
    """One layer's weights, as each path holds them, and its inputs (one per input group)."""

    def __init__(self, shape: dict[str, int], rows: int, seed: int = 0) -> None:
        import torch

        gen = torch.Generator(device="cuda").manual_seed(seed)
        self.dims = _layer_weights(shape)
        self.w_bf16 = {n: torch.randn(o, i, device="cuda", generator=gen).to(torch.bfloat16) * 0.02
                       for n, (o, i) in self.dims.items()}
        self.w_amax = {n: w.float().abs().amax(dim=1) for n, w in self.w_bf16.items()}
        self.w_scale = {n: a / 127.0 for n, a in self.w_amax.items()}
        self.w_q = {n: torch.round(w.float() / self.w_scale[n][:, None]).clamp(-127, 127).to(torch.int8)
                    for n, w in self.w_bf16.items()}
        # a SmoothQuant pre-scale per input group (positive, around 1), as calibration leaves one
        self.pre = {g: torch.rand(self.dims[names[0]][1], device="cuda", generator=gen) + 0.5
                    for g, names in GROUPS.items()}
        self.x = {g: torch.randn(rows, self.dims[names[0]][1], device="cuda", generator=gen).to(torch.bfloat16)
                  for g, names in GROUPS.items()}


def _paths(layer: Layer) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each path as a function running the whole layer and returning its outputs by linear name."""
    import torch

    from benchmarks.int8_gemm_triton import int8_gemm
    from llm_quant.runtime.cuda import kernels, linear

    classes = linear._classes()
    shared = {g: linear._SharedInput() for g in GROUPS}
    modules = {n: classes["Int8WeightLinear"](layer.w_q[n].to(torch.bfloat16) * layer.w_scale[n][:, None].to(
        torch.bfloat16), layer.w_amax[n], "per_token", None, layer.pre[g], None, shared[g])
        for g, names in GROUPS.items() for n in names}
    for n, module in modules.items():  # the codes and scales exactly as the other paths hold them
        module.weight_q.copy_(layer.w_q[n])
        module.w_scale.copy_(layer.w_scale[n])
    fp8_w = {n: (w.float() * (448.0 / w.float().abs().amax())).to(torch.float8_e4m3fn)
             for n, w in layer.w_bf16.items()}
    fp8_ws = {n: (w.float().abs().amax() / 448.0).reshape(()) for n, w in layer.w_bf16.items()}
    fp8_a = {g: float(448.0 / (x.float() * layer.pre[g]).abs().amax()) for g, x in layer.x.items()}
    fp8_as = {g: torch.tensor(1.0 / f, device="cuda") for g, f in fp8_a.items()}

    def bf16() -> dict[str, Any]:
        return {n: layer.x[g] @ layer.w_bf16[n].t() for g, names in GROUPS.items() for n in names}

    def current() -> dict[str, Any]:
        for s in shared.values():
            s.key = None  # each layer call quantizes each input once, as the model's forward does
        return {n: modules[n](layer.x[g]) for g, names in GROUPS.items() for n in names}

    def int_mm() -> dict[str, Any]:
        out = {}
        for g, names in GROUPS.items():
            q, scale = kernels.row_quantize(layer.x[g], layer.pre[g])
            for n in names:
                acc = torch._int_mm(q, layer.w_q[n].t())
                out[n] = (acc.float() * scale[:, None] * layer.w_scale[n]).to(torch.bfloat16)
        return out

    def triton() -> dict[str, Any]:
        out = {}
        for g, names in GROUPS.items():
            q, scale = kernels.row_quantize(layer.x[g], layer.pre[g])
            for n in names:
                out[n] = int8_gemm(q, scale, layer.w_q[n], layer.w_scale[n])
        return out

    def fp8() -> dict[str, Any]:
        out = {}
        for g, names in GROUPS.items():
            q = kernels.fp8_quantize(layer.x[g], layer.pre[g], fp8_a[g])
            for n in names:
                out[n] = torch._scaled_mm(q, fp8_w[n].t(), scale_a=fp8_as[g], scale_b=fp8_ws[n],
                                          out_dtype=torch.bfloat16)
        return out

    return {"bf16": bf16, "current": current, "int_mm": int_mm, "triton": triton, "fp8": fp8}


def _exact_gate(layer: Layer) -> Any:
    """The W8A8 gate projection computed exactly (float64) from the per-token codes the runtime's kernel makes."""
    from llm_quant.runtime.cuda import kernels

    q, scale = kernels.row_quantize(layer.x["mlp"], layer.pre["mlp"])
    return (q.double() @ layer.w_q["gate"].double().t()) * scale.double()[:, None] * layer.w_scale["gate"].double()


def measure(shape_name: str, rows: int) -> list[dict[str, Any]]:
    import torch

    from llm_quant.model import tiny
    from llm_quant.runtime.cuda import kernels

    layer = Layer(tiny.SHAPES[shape_name], rows)
    exact = _exact_gate(layer)
    result = []
    for name, run in _paths(layer).items():
        row: dict[str, Any] = {"shape": shape_name, "rows": rows, "path": name}
        try:
            with torch.inference_mode():
                gate = run()["gate"]  # also the warm-up: Triton's autotuning happens here, not in the timing
                torch.cuda.synchronize()
                if name not in ("bf16", "fp8"):  # those are other formats: their error is not W8A8's
                    row["max_rel_error"] = float((gate.double() - exact).abs().max() / exact.abs().max())
                row["ms"] = round(kernels.time_ms(run, iters=5), 4)
        except Exception as exc:  # noqa: BLE001 - one failing path must not hide the others' numbers
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        result.append(row)
        print(row, flush=True)
    base = next((r["ms"] for r in result if r["path"] == "bf16" and "ms" in r), None)
    for row in result:
        if base and row.get("ms"):
            row["x_bf16"] = round(base / row["ms"], 3)  # > 1: faster than bf16
            row["tok_s_per_layer"] = round(rows / (row["ms"] / 1e3))
    return result


def table(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"int8_prefill_gpu: {env['gpu']}, driver {env['driver']}, torch {env['torch']}; one {result['shape']} "
             "decoder layer (q, k, v, o, gate, up, down), per-token W8A8 unless the path says otherwise", "",
             "| rows | path | ms per layer | x bf16 (speed) | max error / max output (gate) | error |",
             "|---:|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        err = r.get("max_rel_error")
        lines.append(f"| {r['rows']} | {r['path']} | {r.get('ms', '')} | {r.get('x_bf16', '')} | "
                     f"{'' if err is None else f'{err:.2e}'} | {r.get('error', '')} |")
    return "\n".join(lines)


def chart(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["rows"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(counts), figsize=(4.5 * len(counts), 3.6), squeeze=False)
    for ax, rows in zip(axes[0], counts, strict=True):
        mine = [r for r in result["rows"] if r["rows"] == rows and r.get("x_bf16")]
        ax.bar([r["path"] for r in mine], [r["x_bf16"] for r in mine], color="tab:blue")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_title(f"{result['shape']}, {rows} rows: speed vs bf16", fontsize=9)
    return png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--rows", default="512,2048", help="prefill row counts (tokens), comma-separated")
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/int8_prefill_gpu"))
    args = parser.parse_args(argv)
    from llm_quant.model import tiny

    if args.shape not in tiny.SHAPES:
        parser.error(f"--shape: unknown shape {args.shape!r}; choose from {', '.join(tiny.SHAPES)}")
    try:
        counts = [int(v) for v in args.rows.split(",") if v]
    except ValueError:
        parser.error(f"--rows: {args.rows!r} is not a comma-separated list of row counts")
    if not counts or min(counts) <= 16:
        parser.error("--rows: prefill row counts must be above 16 (up to 16 rows run the decode kernels)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("int8_prefill_gpu: no CUDA GPU visible; run it on a GPU machine")
    rows = [r for count in counts for r in measure(args.shape, count)]
    result = {"environment": _environment(), "shape": args.shape, "rows": rows}
    text = table(result)
    print(text)
    save_report(args.out, "int8_prefill_gpu", result, text, chart(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

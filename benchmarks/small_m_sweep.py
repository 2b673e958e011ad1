"""Which small-M (decode) GEMM configuration is fastest on this GPU: split-K on tensor cores or on CUDA cores, per
block size, against bf16 cuBLAS and FP8 ``_scaled_mm`` for the same layer, side by side in one run.

    python benchmarks/small_m_sweep.py --out benchmarks/results [--shape llama-3.1-8b] [--rows 1,8]

The runtime times a short list of these at load (``kernels.ONE_ROW`` / ``FEW_ROWS``) and keeps the fastest: the
``*_chosen`` columns are its choice. Each kernel is timed inside a CUDA graph (launch overhead removed, as in graph-captured decode). Every split-K
result is checked against the unsplit fused kernel (same quantized operands, fp32 accumulation) before its time is
counted. Prints a table (µs, and the ratio to bf16) and writes small_m_sweep.json / .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.llm_runtime_gpu import _kernel_us  # noqa: E402

DOT = [("dot", bn, bk, s, 4) for bn in (32, 64, 128) for bk in (128, 256) for s in (1, 2, 4, 8)]
CORES = [("cores", bn, bk, s, 4) for bn in (8, 16, 32) for bk in (128, 256, 512) for s in (1, 2, 4)]
GEMV = [("gemv", bn, bk, s, w) for bn in (8, 16, 32) for bk in (256, 512) for s in (1, 2, 4)
        for w in (4, 8)]
CORE_MAX_ELEMENTS = 16384  # rows x block_n x block_k held in registers by one program


def _configs(m: int) -> list[Any]:
    from llm_quant.runtime.cuda.kernels import SmallM

    rows = 1 << max(0, (m - 1).bit_length())
    picked = [c for c in CORES if rows * c[1] * c[2] <= CORE_MAX_ELEMENTS] + DOT
    if m == 1:
        picked += [c for c in GEMV if c[1] * c[2] <= CORE_MAX_ELEMENTS]
    return [SmallM(*c) for c in picked]


def sweep(k: int, n: int, m: int) -> dict[str, Any]:
    import torch

    from llm_quant.runtime.cuda import kernels

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).to(torch.bfloat16)
    w8 = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=gen)
    wf8 = w.to(torch.float8_e4m3fn)
    scale = torch.rand(n, device="cuda", generator=gen) * 1e-2
    one = torch.ones((), device="cuda")
    row: dict[str, Any] = {"K": k, "N": n, "M": m, "bf16_mm": _kernel_us(lambda: x @ w.t())}
    row["fp8_scaled_mm"] = _kernel_us(lambda: torch._scaled_mm(
        kernels.fp8_quantize(x, None, 1.0), wf8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    want = kernels.small_m_gemm(x, w8, scale, act=kernels.ACT_INT8_TOKEN).float()
    row["w8a8_unsplit"] = _kernel_us(lambda: kernels.small_m_gemm(x, w8, scale, act=kernels.ACT_INT8_TOKEN))
    configs = _configs(m)
    if m == 1:
        configs += [replace(c, prequant=True) for c in configs if c.kernel == "gemv" and c.num_warps == 4]
    tried = []
    for how in configs:
        try:
            got = kernels.small_m(how, x, w8, scale, act=kernels.ACT_INT8_TOKEN).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            us = _kernel_us(lambda h=how: kernels.small_m(h, x, w8, scale, act=kernels.ACT_INT8_TOKEN))
            tried.append({"label": how.label, "how": how, "us": us, "rel_err": err})
        except Exception as exc:  # noqa: BLE001 - a configuration that cannot compile here is a finding
            tried.append({"label": how.label, "error": f"{exc.__class__.__name__}: {str(exc)[:160]}"})
    ok = sorted((t for t in tried if "us" in t and t["rel_err"] < 1e-2), key=lambda t: t["us"])
    row["errors"] = sorted({t["error"] for t in tried if "error" in t})[:3]
    row["bad"] = [{k: t[k] for k in ("label", "rel_err")} for t in tried if t.get("rel_err", 0) >= 1e-2][:3]
    row["top5"] = [f"{t['label']}: {t['us']}" for t in ok[:5]]
    if ok:
        how = ok[0]["how"]
        row["best"], row["w8a8_split"] = how.label, ok[0]["us"]
        w8a16 = replace(how, prequant=False)
        row["w8a16_split"] = _kernel_us(lambda: kernels.small_m(w8a16, x, w8, scale, act=kernels.ACT_NONE))
        try:
            ref = torch._scaled_mm(kernels.fp8_quantize(x, None, 1.0), wf8.t(), scale_a=one, scale_b=one,
                                   out_dtype=torch.bfloat16).float()
            got = kernels.small_m(w8a16, x, wf8, one, act=kernels.ACT_FP8, act_factor=1.0, act_scale=1.0).float()
            row["fp8_split_rel_err"] = ((got - ref).abs().max() / ref.abs().max()).item()
            row["fp8_split"] = _kernel_us(lambda: kernels.small_m(
                w8a16, x, wf8, one, act=kernels.ACT_FP8, act_factor=1.0, act_scale=1.0))
        except Exception as exc:  # noqa: BLE001
            row["fp8_split_error"] = f"{exc.__class__.__name__}: {str(exc)[:160]}"
    for key, act in (("w8a8_chosen", kernels.ACT_INT8_TOKEN), ("w8a16_chosen", kernels.ACT_NONE)):
        chosen = kernels.choose_small_m(w8, scale, act=act, rows=m)
        row[key] = _kernel_us(lambda c=chosen, a=act: kernels.small_m(c, x, w8, scale, act=a))
        row[key + "_label"] = chosen.label
    row["tried"] = [{k: v for k, v in t.items() if k != "how"} for t in tried]
    return row


COLUMNS = ("bf16_mm", "fp8_scaled_mm", "fp8_split", "w8a8_unsplit", "w8a8_split", "w8a8_chosen", "w8a16_split",
           "w8a16_chosen")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| K | N | M | " + " | ".join(COLUMNS) + " | best W8A8 config |",
             "|---|---|---|" + "---:|" * len(COLUMNS) + "---|"]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            cells.append("—" if v is None else f"{v:.1f} ({r['bf16_mm'] / v:.2f}×)" if c != "bf16_mm" else f"{v:.1f}")
        lines.append(f"| {r['K']} | {r['N']} | {r['M']} | " + " | ".join(cells) + f" | {r.get('best', '—')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--rows", default="1,8", help="decode batch sizes (M) to sweep")
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/small_m_sweep"))
    args = parser.parse_args(argv)
    from llm_quant.model import tiny

    if args.shape not in tiny.SHAPES:
        parser.error(f"--shape {args.shape}: not a known shape; choose from {','.join(tiny.SHAPES)}")
    batch_sizes = args.rows.split(",")
    if not all(r.isdigit() and 1 <= int(r) <= 16 for r in batch_sizes):
        parser.error(f"--rows {args.rows}: decode batch sizes are integers from 1 to 16, e.g. 1,8")
    import torch

    shape = tiny.SHAPES[args.shape]
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    rows = []
    for k, n in ((hidden, hidden), (hidden, inter), (inter, hidden)):
        for m in (int(v) for v in batch_sizes):
            rows.append(sweep(k, n, m))
            r = rows[-1]
            print({c: r.get(c) for c in ("K", "N", "M", *COLUMNS, "best", "top5")}, r.get("errors"), r.get("bad"), flush=True)
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": args.shape,
              "python": platform.python_version(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "small_m_sweep.json").write_text(json.dumps(result, indent=1))
    text = f"{result['gpu']}, torch {result['torch']}, µs per GEMM in a CUDA graph (ratio: bf16 / kernel)\n\n"
    (args.out / "small_m_sweep.md").write_text(text + table(rows) + "\n")
    print(text + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

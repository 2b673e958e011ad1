"""The embedded runtime on the GPU: bf16 eager (HF generate), bf16 with the same graph capture as the quantized
models, and each quantized format on real kernels (``llm_quant.runtime.cuda.linear``) with graph-captured decode
(``llm_quant.runtime.cuda.decode``), on random Llamas of real dimensions, side by side in one run.

Per row: prefill tok/s (one forward over ``--prefill`` tokens), decode tok/s at batch 1 and 8 (greedy, ``--new``
tokens after a 32-token prompt), weights of the linear layers on the GPU (and their share of bf16), capture time,
and for quantized rows the agreement of the real kernels with modelopt's fake quantization on the same model
(argmax over a window of random tokens, largest logit difference). Speed does not depend on the scales' values,
so calibration here is short (``--calib`` sequences of 128 random tokens). Prints a table and writes
``llm_runtime_gpu.json``, ``.md`` and ``.png``.

    python benchmarks/llm_runtime_gpu.py --out benchmarks/results [--shapes llama-3.2-1b,llama-3.1-8b]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_scale import _environment  # noqa: E402
from benchmarks.llm_runtime import png_bytes, save_report  # noqa: E402


def _timed(fn: Any, repeats: int = 3) -> float:
    import torch

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _linear_bytes(model: Any, *, skip: tuple[str, ...] = ()) -> int:
    """Bytes of every linear layer's weights, scales and packed data (``skip``: module names left out)."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in skip:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__.endswith("Linear"):
            tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
            packed = getattr(module, "packed", None)
            if packed is not None:
                total += packed.numel() * packed.element_size()
    return total


def _profiled(fn: Any) -> tuple[Any, float]:
    """torch.profiler (CPU and CUDA) over one call of ``fn`` after a warm-up call, and that call's wall seconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return prof, wall


def _profile(fn: Any, top: int = 8) -> dict[str, Any]:
    """Where one call's time goes: wall ms, GPU-busy ms (sum of kernel times; far below wall means the host's launches
    are the bottleneck) and the ``top`` kernels by total time, from torch.profiler (kernels inside CUDA graphs
    included)."""
    import torch

    prof, wall = _profiled(fn)
    kernels: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time > 0:
            entry = kernels.setdefault(event.name[:90], [0.0, 0])
            entry[0] += event.device_time
            entry[1] += 1
    busy = sum(v[0] for v in kernels.values())
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    # the host's side, for wall far above GPU-busy: where its own time went, and how often it waited for the GPU
    host = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    host_top = sorted(host, key=lambda e: -e.self_cpu_time_total)[:top]
    waits = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
             "cudaMemcpyAsync")
    return {"wall_ms": round(wall * 1e3, 2), "gpu_busy_ms": round(busy / 1e3, 2),
            "kernels": sum(int(v[1]) for v in kernels.values()),
            "top": [{"name": k, "ms": round(v[0] / 1e3, 3), "calls": int(v[1])} for k, v in ranked],
            "host_top": [{"name": e.key[:90], "self_ms": round(e.self_cpu_time_total / 1e3, 3), "calls": e.count}
                         for e in host_top],
            "host_waits": {e.key: e.count for e in host if e.key in waits}}


def _kernel_sources(fn: Any, top: int = 12) -> list[dict[str, Any]]:
    """Which aten ops launch one eager call's CUDA kernels: per outermost aten op, the kernels it launched and
    their GPU time. Inside a CUDA graph kernels have no launching op, so a decode step is profiled eagerly for
    this; kernels launched from Python (Triton's) have none either and are left out."""
    import torch

    prof, _ = _profiled(fn)
    sources: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU or not event.kernels:
            continue
        outer = event
        while outer.cpu_parent is not None and outer.cpu_parent.name.startswith("aten::"):
            outer = outer.cpu_parent
        entry = sources.setdefault(outer.name, [0, 0.0])
        entry[0] += len(event.kernels)
        entry[1] += sum(kernel.duration for kernel in event.kernels)
    ranked = sorted(sources.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"op": name, "kernels": int(v[0]), "ms": round(v[1] / 1e3, 3)} for name, v in ranked]


def _measure(model: Any, args: argparse.Namespace, *, graph: bool) -> dict[str, Any]:
    import torch

    from llm_quant.runtime.cuda.decode import GraphDecoder

    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    prefill_ids = torch.randint(0, min(vocab, 512), (1, args.prefill), device="cuda", generator=gen)
    row: dict[str, Any] = {}
    with torch.inference_mode():
        seconds = _timed(lambda: model(input_ids=prefill_ids, logits_to_keep=1))
    row["prefill_tok_s"] = round(args.prefill / seconds)
    # graph rows, three decoders: with fused elementwise kernels and length buckets (the default since 0fcfa4c) at the
    # max_len serve uses; a plain one (neither; the keys keep their old "_default" name) at that max_len; the plain
    # one on a cache just long enough (what rows before 2026-12-07 timed)
    short = args.prompt + args.new + 8
    decoders = {"": GraphDecoder(model, max_len=args.max_len, fuse=True, length_buckets=True),
                "_default": GraphDecoder(model, max_len=args.max_len, fuse=False, length_buckets=False),
                "_short": GraphDecoder(model, max_len=short, fuse=False, length_buckets=False)} if graph else {"": None}
    if graph:  # prefill as serve runs it: through the decoder's static cache, fused (compiled) or not
        for suffix in ("", "_default"):
            prefilling: Any = decoders[suffix]
            prefilling.prefill(prefill_ids)  # compilation happens here, not in the timing
            seconds = _timed(lambda d=prefilling: d.prefill(prefill_ids))
            row[f"prefill_tok_s_decoder{suffix}"] = round(args.prefill / seconds)
    for suffix, decoder in decoders.items():
        for batch in (1, 8):
            prompt = torch.randint(0, min(vocab, 512), (batch, args.prompt), device="cuda", generator=gen)
            if decoder is not None:
                decoder.generate(prompt, args.new)  # capture (warm-up, compilation) happens here, not in the timing
                seconds = _timed(lambda p=prompt, d=decoder: d.generate(p, args.new))
            else:
                with torch.inference_mode():
                    def run(p: Any = prompt) -> Any:
                        return model.generate(input_ids=p, attention_mask=torch.ones_like(p),
                                              max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                                              pad_token_id=0)
                    run()
                    seconds = _timed(run, repeats=2)
            row[f"decode_b{batch}_tok_s{suffix}"] = round(batch * args.new / seconds, 1)
        if decoder is not None:
            row[f"capture_s{suffix}"] = decoder.capture_seconds
    decoder = decoders[""]
    if decoder is not None:
        row["fused"] = decoder.fused
        if decoder.fuse_error:
            row["fuse_error"] = decoder.fuse_error
    if args.profile:
        with torch.inference_mode():
            row["profile_prefill"] = _profile(lambda: model(input_ids=prefill_ids, logits_to_keep=1))
        if decoder is not None:
            prompt = torch.randint(0, min(vocab, 512), (1, args.prompt), device="cuda", generator=gen)
            for suffix, profiled in decoders.items():
                if suffix != "_short" and profiled is not None:
                    row[f"profile_decode_b1{suffix}"] = _profile(lambda d=profiled: d.generate(prompt, 16))
            # one decode step run eagerly (the default decoder's batch-1 cache, rewound by the next generate):
            # which ops the kernels per token come from
            eager: Any = decoders["_default"]
            state = eager.graphs[1]
            try:  # diagnostics only: a failure here must not cost the timings above
                with torch.inference_mode():
                    row["profile_step_sources"] = _kernel_sources(
                        lambda: eager._forward(state.ids, state.position, state.pad, state.cache))
            except Exception as exc:  # noqa: BLE001
                row["profile_step_sources"] = f"{exc.__class__.__name__}: {str(exc)[:200]}"
        for key in ("profile_prefill", "profile_decode_b1", "profile_decode_b1_default", "profile_step_sources"):
            if key in row:
                print(key, row[key], flush=True)
    row["linear_gib"] = round(_linear_bytes(model) / 2**30, 3)
    # lm_head stays bf16 in every format (TensorRT-LLM's default too): the share the memory bound is about
    row["quantizable_gib"] = round(_linear_bytes(model, skip=("lm_head",)) / 2**30, 3)
    row["gpu_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return row


def _agreement(fake_logits: Any, model: Any, ids: Any) -> dict[str, float]:
    import torch

    with torch.inference_mode():
        real = model(input_ids=ids).logits.float()
    return {"argmax_agree": round(float((real.argmax(-1) == fake_logits.argmax(-1)).float().mean()), 4),
            "max_logit_diff": round(float((real - fake_logits).abs().max()), 4),
            "logit_scale": round(float(fake_logits.abs().max()), 3)}


def _quantized(model_dir: Path, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """One quantized row. ``spec`` is a qformat, or ``fp8:scaled_mm``: FP8 with every decode row on quantize +
    ``torch._scaled_mm`` instead of the small-M kernel the load-time clock picks (in the 2026-12-07 H100 run it
    picked the Triton kernels for all 224 linears, although one GEMM alone ran 1.4x faster on ``_scaled_mm``)."""
    import torch

    from llm_quant.calibration import calibrate
    from llm_quant.runtime.cuda import linear
    from llm_quant.runtime.cuda.linear import convert_linears_cuda

    qformat, _, variant = spec.partition(":")

    model = calibrate.load_model(model_dir, dtype="bfloat16", device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [torch.randint(0, 512, (4, 128), device="cuda", generator=gen) for _ in range(args.calib)]
    start = time.perf_counter()
    mode = "per_token" if qformat == "int8_sq" else "per_tensor"
    model = calibrate.quantize(model, qformat, batches, sq_activations=mode, smoothquant_alpha=0.5
                               if qformat == "int8_sq" else None, description=f"calibrating {qformat}")
    calib_s = time.perf_counter() - start
    ids = torch.randint(0, 512, (1, 256), device="cuda", generator=gen)
    with torch.inference_mode():
        fake = model(input_ids=ids).logits.float()
    start = time.perf_counter()
    with mock.patch.object(linear, "_small_m_wins", lambda *a, **k: None) if variant else contextlib.nullcontext():
        report = convert_linears_cuda(model, activations=mode)
    convert_s = time.perf_counter() - start
    row = {"calibrate_s": round(calib_s, 1), "convert_s": round(convert_s, 1), "kernels": report.summary(),
           **_agreement(fake, model, ids)}
    del fake
    row.update(_measure(model, args, graph=True))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return row


def _kernel_us(fn: Any, repeats: int = 20) -> float:
    """Microseconds per call, launch overhead removed: ``repeats`` calls captured in one CUDA graph."""
    import torch

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    return round((time.perf_counter() - start) / (5 * repeats) * 1e6, 1)


GEMM_KERNELS = ("bf16_mm", "fp8_scaled_mm", "fp8_fused", "int8_fused_w8a8", "int8_fused_w8a16", "int8_int_mm",
                "int8_dequant_mm", "int4_tinygemm")


def _gemm_row(k: int, n: int, m: int, ops: dict[str, Any]) -> dict[str, Any]:
    import torch

    from llm_quant.runtime.cuda import kernels as cuda_kernels

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    one = torch.ones((), device="cuda")
    row: dict[str, Any] = {"K": k, "N": n, "M": m, "bf16_mm": _kernel_us(lambda: x @ ops["w"].t())}
    row["fp8_scaled_mm"] = _kernel_us(lambda: torch._scaled_mm(
        cuda_kernels.fp8_quantize(x, None, 1.0), ops["wf8"].t(), scale_a=one, scale_b=one,
        out_dtype=torch.bfloat16))
    if m <= cuda_kernels.MAX_M:  # decode: the small-M kernel the runtime chooses at load for this shape
        scale = torch.ones(n, device="cuda")
        for key, weight, w_scale, act in (("fp8_fused", ops["wf8"], one, cuda_kernels.ACT_FP8),
                                          ("int8_fused_w8a8", ops["w8"], scale, cuda_kernels.ACT_INT8_TOKEN),
                                          ("int8_fused_w8a16", ops["w8"], scale, cuda_kernels.ACT_NONE)):
            how = cuda_kernels.choose_small_m(weight, w_scale, act=act, rows=m)
            row[key] = _kernel_us(lambda h=how, w=weight, s=w_scale, a=act: cuda_kernels.small_m(
                h, x, w, s, act=a, act_factor=1.0, act_scale=1.0))
            row[key + "_kernel"] = how.label
    else:
        row["int8_int_mm"] = _kernel_us(lambda: torch._int_mm(x.to(torch.int8), ops["w8"].t()))
    row["int8_dequant_mm"] = _kernel_us(lambda: x @ ops["w8"].to(torch.bfloat16).t())
    row["int4_tinygemm"] = _kernel_us(lambda: torch._weight_int4pack_mm(x, ops["packed"], 128, ops["sz"]))
    return row


def kernels(shape: dict[str, Any]) -> list[dict[str, Any]]:
    """Each GEMM of one decoder layer of ``shape`` alone, per kernel the runtime could use, at M = 1, 8, 2048."""
    import torch

    from llm_quant.runtime.cuda import kernels as cuda_kernels

    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    rows = []
    for k, n in ((hidden, hidden), (hidden, inter), (inter, hidden)):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        q4 = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int32)
        packed, sz = cuda_kernels.int4_pack(q4, torch.full((n, k // 128), 0.01, device="cuda"))
        ops = {"w": w, "wf8": w.to(torch.float8_e4m3fn), "packed": packed, "sz": sz,
               "w8": torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)}
        for m in (1, 8, 2048):
            try:
                rows.append(_gemm_row(k, n, m, ops))
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot run here is a finding, not a crash
                rows.append({"K": k, "N": n, "M": m, "error": f"{exc.__class__.__name__}: {str(exc)[:120]}"})
            print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from llm_quant.calibration import calibrate
    from llm_quant.model import tiny



    root = Path(args.workdir or tempfile.mkdtemp(prefix="llm_runtime_gpu-"))
    rows: list[dict[str, Any]] = []
    for shape in args.shapes.split(","):
        model_dir = root / shape
        if not (model_dir / "config.json").is_file():
            tiny.random_llama(model_dir, shape=tiny.SHAPES[shape], device="cuda", logit_scale=4.0)
        model = calibrate.load_model(model_dir, dtype="bfloat16", device="cuda")
        for name, graph in (("bf16 eager", False), ("bf16 graph", True)):
            row = {"shape": shape, "runtime": name, **_measure(model, args, graph=graph)}
            rows.append(row)
            print(row, flush=True)
        bf16_linear, bf16_quantizable = rows[-1]["linear_gib"], rows[-1]["quantizable_gib"]
        del model
        gc.collect()
        torch.cuda.empty_cache()
        for qformat in args.formats.split(","):
            try:
                row = {"shape": shape, "runtime": qformat, **_quantized(model_dir, qformat, args)}
            except Exception as exc:  # noqa: BLE001 - one failing format must not hide the others' numbers
                row = {"shape": shape, "runtime": qformat, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
                torch.cuda.empty_cache()
            if "linear_gib" in row:
                row["linear_share_of_bf16"] = round(row["linear_gib"] / bf16_linear, 3)
                row["quantized_share_of_bf16"] = round(row["quantizable_gib"] / bf16_quantizable, 3)
            rows.append(row)
            print(row, flush=True)
    base = {(r["shape"]): r for r in rows if r["runtime"] == "bf16 graph"}
    for row in rows:
        ref = base.get(row["shape"])
        if ref is None or "error" in row:
            continue
        for key in ("prefill_tok_s", "prefill_tok_s_decoder", "prefill_tok_s_decoder_default", "decode_b1_tok_s", "decode_b8_tok_s", "decode_b1_tok_s_default",
                    "decode_b8_tok_s_default", "decode_b1_tok_s_short", "decode_b8_tok_s_short"):
            if key in row and key in ref:
                row[f"{key}_vs_bf16_graph"] = round(row[key] / ref[key], 3)
    micro = kernels(tiny.SHAPES[args.shapes.split(",")[-1]]) if args.kernels else []
    return {"environment": _environment(), "rows": rows, "prefill": args.prefill, "new_tokens": args.new,
            "max_len": args.max_len,
            "kernels": micro}


def _variant(row: dict[str, Any], suffix: str, key: str = "decode_b{}_tok_s", fills: tuple[str, str] = ("1", "8")) -> str:
    """Two figures of one kind (another graph decoder's batch-1 / batch-8 tok/s; the decoders' prefill) and their
    ratios to bf16's same, where measured."""
    names = [key.format(fill) + suffix for fill in fills]
    if any(name not in row for name in names):
        return ""
    ratios = [row.get(f"{name}_vs_bf16_graph") for name in names]
    return (f"{row[names[0]]} / {row[names[1]]}" + (f" ({ratios[0]} / {ratios[1]})" if None not in ratios else ""))


def table(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"llm_runtime_gpu: {env['gpu']}, driver {env['driver']}, torch {env['torch']}, modelopt "
             f"{env['modelopt']}; prefill {result['prefill']} tokens, decode {result['new_tokens']} new tokens; "
             f"graph decoders: fused + length buckets and plain (neither) at max_len {result.get('max_len')}, "
             "plain on a short cache", "",
             "| shape | runtime | prefill tok/s | x bf16-graph | decoder prefill fused / plain (x) | decode b1 tok/s | x | decode b8 tok/s | x | "
             "plain b1 / b8 tok/s (x) | short cache b1 / b8 (x) | linear GiB (share of bf16) | "
             "argmax agree / max Δlogit | kernels |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['runtime']} | error: {r['error']} |")
            continue
        agree = f"{r['argmax_agree']} / {r['max_logit_diff']}" if "argmax_agree" in r else ""
        share = (f" ({r['linear_share_of_bf16']}; w/o lm_head {r['quantized_share_of_bf16']})"
                 if "quantized_share_of_bf16" in r else "")
        lines.append(
            f"| {r['shape']} | {r['runtime']} | {r['prefill_tok_s']} | {r.get('prefill_tok_s_vs_bf16_graph', '')} | "
            f"{_variant(r, '', 'prefill_tok_s_decoder{}', ('', '_default'))} | "
            f"{r['decode_b1_tok_s']} | {r.get('decode_b1_tok_s_vs_bf16_graph', '')} | {r['decode_b8_tok_s']} | "
            f"{r.get('decode_b8_tok_s_vs_bf16_graph', '')} | {_variant(r, '_default')} | {_variant(r, '_short')} | "
            f"{r['linear_gib']}{share} | {agree} | {r.get('kernels', '')} |")
    if result.get("kernels"):
        names = list(GEMM_KERNELS)
        lines += ["", "One GEMM alone (µs per call, launch overhead removed by a CUDA graph):", "",
                  "| K | N | M | " + " | ".join(names) + " |", "|---|---|---|" + "---:|" * len(names)]
        for r in result["kernels"]:
            cells = [str(r.get(k, "")) for k in names] if "error" not in r else [r["error"]] + [""] * (len(names) - 1)
            lines.append(f"| {r['K']} | {r['N']} | {r['M']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    shapes = sorted({r["shape"] for r in rows})
    if not shapes:  # the GEMM table alone: µs per kernel, one panel per M
        micro = [r for r in result.get("kernels", []) if "error" not in r]
        ms = sorted({r["M"] for r in micro})
        fig, axes = plt.subplots(1, max(len(ms), 1), figsize=(5 * max(len(ms), 1), 3.6), squeeze=False)
        names = GEMM_KERNELS
        for ax, m in zip(axes[0], ms, strict=False):
            mine = [r for r in micro if r["M"] == m]
            for i, name in enumerate(names):
                ax.bar([j + i * 0.1 for j in range(len(mine))], [r.get(name, 0) for r in mine], width=0.1,
                       label=name)
            ax.set_xticks(range(len(mine)), [f"{r['K']}x{r['N']}" for r in mine], fontsize=7)
            ax.set_title(f"M = {m}: µs per GEMM", fontsize=9)
        axes[0][0].legend(fontsize=6)
        return png_bytes(fig)
    fig, axes = plt.subplots(len(shapes), 3, figsize=(13, 3.4 * len(shapes)), squeeze=False)
    for i, shape in enumerate(shapes):
        mine = [r for r in rows if r["shape"] == shape]
        for j, key in enumerate(("prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s")):
            ax = axes[i][j]
            ax.bar([r["runtime"] for r in mine], [r[key] for r in mine], color="tab:blue")
            ax.set_title(f"{shape}: {key.replace('_tok_s', '')} (tok/s)", fontsize=9)
            ax.tick_params(axis="x", labelsize=7, rotation=30)
    return png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="llama-3.2-1b,llama-3.1-8b")
    parser.add_argument("--formats", default="fp8,int8_sq,int4_awq",
                        help="qformats, comma-separated; fp8:scaled_mm forces FP8 decode rows onto _scaled_mm")
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048,
                        help="the graph decoders' cache length (the embedded runtime's serve default)")
    parser.add_argument("--calib", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/llm_runtime_gpu"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kernel-shape", default="llama-3.1-8b", help="the layer timed with --shapes ''")
    parser.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each GEMM alone per kernel (the last shape's layer)")
    parser.add_argument("--profile", action="store_true",
                        help="also record where prefill and batch-1 decode time goes (torch.profiler)")
    args = parser.parse_args(argv)
    from llm_quant.runtime.cuda.linear import QFORMAT_CUDA_KERNELS

    runtimes = (*QFORMAT_CUDA_KERNELS, "fp8:scaled_mm")  # the qformats with CUDA kernels, and one FP8 variant
    for spec in filter(None, args.formats.split(",")):
        if spec not in runtimes:
            parser.error(f"--formats: unknown runtime {spec!r}; choose from {', '.join(runtimes)}")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("llm_runtime_gpu: no CUDA GPU visible; run it on a GPU machine")
    if args.shapes:
        result = run(args)
    else:  # --shapes "": the GEMM table alone (no model), for the layer of --kernel-shape
        from llm_quant.model import tiny

        result = {"environment": _environment(), "rows": [], "prefill": args.prefill, "new_tokens": args.new,
                  "kernels": kernels(tiny.SHAPES[args.kernel_shape])}
    text = table(result)
    print(text)
    save_report(args.out, "llm_runtime_gpu", result, text, chart(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

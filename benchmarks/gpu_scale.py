"""Scale on the GPU: ``llm-quant build`` of an 8B-shaped random Llama per qformat, side by side with modelopt's own
quantize + TensorRT-LLM export of the same model on the same calibration tokens, in one run. Two rows of ours:
``ours`` (the default build: TensorRT-LLM checkpoint, HF checkpoint, embedded runtime, Triton repository) and
``ours-trtllm`` (``--no-hf-checkpoint``: one 8 GB checkpoint, as modelopt's flow writes), each with its ratio to
modelopt's flow.

Each build runs in a child process of its own, so peak GPU memory (``torch.cuda.max_memory_allocated``) and peak
RSS (``ru_maxrss``) belong to that build alone. Prints a table, writes ``gpu_scale.json``, ``gpu_scale.md`` and
``gpu_scale.png`` (wall time per stage and peak GPU memory, ours vs modelopt's flow).

    python benchmarks/gpu_scale.py --out benchmarks/results [--shape llama-3.1-8b] [--qformats fp8,int8_sq,int4_awq]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llm_runtime import png_bytes, save_report  # noqa: E402

FLOWS = ("ours", "ours-trtllm", "modelopt")  # ours-trtllm: --no-hf-checkpoint, the artifacts modelopt's flow writes


def _peaks() -> dict[str, float]:
    import torch

    return {"peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def _sizes(folder: Path) -> dict[str, float]:
    return {p.name: round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**30, 3)
            for p in sorted(folder.iterdir()) if p.is_dir()}


def _config(model: Path, out: Path, qformat: str, calib_size: int, seq_len: int, hf: bool = True) -> Any:
    from llm_quant.pipeline import make_config

    return make_config(str(model), overrides={"out": out, "device": "cuda", "qformat": qformat,
                                              "build_engine": False, "hf_checkpoint": hf},
                       calib={"size": calib_size, "seq_len": seq_len, "batch_size": 8},
                       eval_opts={"seq_len": seq_len, "max_tokens": 4096})[0]


def child_ours(model: Path, work: Path, qformat: str, calib_size: int, seq_len: int,
               hf: bool = True) -> dict[str, Any]:
    start = time.perf_counter()  # both flows are timed from before their imports (a user's process pays them)
    from llm_quant.pipeline import build

    imported = time.perf_counter() - start
    result = build(_config(model, work / "ours", qformat, calib_size, seq_len, hf=hf))
    wall = time.perf_counter() - start
    stages = {"import": imported, **result.timings}
    return {"wall_s": round(wall, 1), "stages": {k: round(v, 1) for k, v in stages.items()},
            "sizes_gib": _sizes(work / "ours"), **_peaks()}


def child_modelopt(model: Path, work: Path, qformat: str, calib_size: int, seq_len: int) -> dict[str, Any]:
    """modelopt's documented flow: from_pretrained, mtq.quantize(model, <CFG>, forward_loop), TRT-LLM export.
    Timed from before its imports, as ours is: a script running this flow imports modelopt and transformers too
    (ours imports them inside its data and calibrate stages)."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    from llm_quant.calibration import calibrate
    from llm_quant.pipeline import prepare

    stages["import"] = time.perf_counter() - start
    t = time.perf_counter()
    cfg = _config(model, work / "unused", qformat, calib_size, seq_len)
    batches = prepare(cfg).calib_batches  # the same calibration tokens as ours (a flow needs its data too)
    stages["data"] = time.perf_counter() - t
    t = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.bfloat16)
    hf = hf.to("cuda").eval()  # type: ignore[arg-type]  # transformers' typed .to takes the model first
    stages["load"] = time.perf_counter() - t
    t = time.perf_counter()
    quant_cfg = calibrate.modelopt_config(qformat, block_size=calibrate.int4_block_size(hf, qformat)
                                          if "int4" in qformat or "w4" in qformat else None)

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for batch in batches:
                m(batch.to("cuda"))

    hf = mtq.quantize(hf, quant_cfg, forward_loop)
    stages["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    export_tensorrt_llm_checkpoint(hf, "llama", torch.bfloat16, str(work / "modelopt" / "trtllm_checkpoint"),
                                   inference_tensor_parallel=1)
    stages["export_trtllm"] = time.perf_counter() - t
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 1), "stages": {k: round(v, 1) for k, v in stages.items()},
            "sizes_gib": _sizes(work / "modelopt"), **_peaks()}


def _drop_page_cache() -> bool:
    """Both flows read the checkpoint cold: the one run first would otherwise also pay for the writeback of the
    freshly written model (root only; the table says when it could not)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _run_child(kind: str, model: Path, work: Path, qformat: str, args: argparse.Namespace) -> dict[str, Any]:
    cold = _drop_page_cache()
    argv = [sys.executable, __file__, "--child", kind, "--model", str(model), "--work", str(work),
            "--qformats", qformat, "--calib-size", str(args.calib_size), "--calib-seq-len", str(args.calib_seq_len)]
    print(f"gpu_scale: {qformat} {kind} ...", file=sys.stderr, flush=True)
    try:  # the child's progress goes to our stderr as it happens: a run cut short still shows where it was
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.child_timeout} s", "cold_page_cache": cold}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return {**json.loads(line), "cold_page_cache": cold}
    return {"error": f"exit {done.returncode} without a result (its stderr is above)"}


def _environment() -> dict[str, Any]:
    from importlib import metadata

    import torch

    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "driver": driver,
            "torch": torch.__version__, "modelopt": metadata.version("nvidia-modelopt"),
            "transformers": metadata.version("transformers")}


def _chart(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['qformat']}\n{r['flow']}" for r in rows]
    bottoms = [0.0] * len(rows)
    stages = sorted({s for r in rows for s in r.get("stages", {})})
    for stage in stages:
        values = [r.get("stages", {}).get(stage, 0.0) for r in rows]
        ax_time.bar(labels, values, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax_time.set_ylabel("wall time per stage (s)")
    ax_time.legend(fontsize=7)
    ax_mem.bar(labels, [r.get("peak_gpu_gib", 0.0) for r in rows], color="tab:gray")
    ax_mem.set_ylabel("peak GPU memory allocated (GiB)")
    for ax in (ax_time, ax_mem):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--qformats", default="fp8,int8_sq,int4_awq")
    parser.add_argument("--calib-size", type=int, default=64)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/gpu_scale"))
    parser.add_argument("--workdir", type=Path, default=None, help="where models and builds go (default: a tmp dir)")
    parser.add_argument("--child-timeout", type=float, default=None,
                        help="seconds one flow may take before its row records the timeout")
    parser.add_argument("--flows", default="ours,ours-trtllm,modelopt", help="which of ours, ours-trtllm, modelopt")
    parser.add_argument("--child", choices=FLOWS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_timeout is not None and not args.child_timeout > 0:
        parser.error(f"--child-timeout {args.child_timeout:g}: give a number of seconds above 0")
    unknown = sorted(set(args.flows.split(",")) - set(FLOWS))
    if unknown:
        parser.error(f"--flows {','.join(unknown)}: not a flow; choose from {','.join(FLOWS)}")
    if args.child:
        call = (args.model, args.work, args.qformats, args.calib_size, args.calib_seq_len)
        row = child_modelopt(*call) if args.child == "modelopt" else child_ours(*call, hf=args.child == "ours")
        print(json.dumps(row))
        return
    import torch

    from llm_quant.model import preflight, tiny


    if not torch.cuda.is_available():
        raise SystemExit("gpu_scale: no CUDA GPU visible; run it on a GPU machine")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_scale-"))
    model = root / args.shape
    if not (model / "config.json").is_file():
        t = time.perf_counter()
        tiny.random_llama(model, shape=tiny.SHAPES[args.shape], device="cuda")
        print(f"made {args.shape} on the GPU in {time.perf_counter() - t:.1f} s", flush=True)
    sm = preflight.sm_version(torch.cuda.get_device_capability(0))
    rows: list[dict[str, Any]] = []
    for qformat in args.qformats.split(","):
        if preflight.format_problem(qformat, sm):
            rows.append({"qformat": qformat, "flow": "skipped", "error": f"not runnable on SM {sm}"})
            continue
        flows = [f for f in FLOWS if f in args.flows.split(",")]
        for flow in flows[::-1] if len(rows) % 2 else flows:  # alternate which flow reads the model first
            work = root / f"{qformat}-{flow}"
            shutil.rmtree(work, ignore_errors=True)
            row = {"qformat": qformat, "flow": flow, **_run_child(flow, model, work, qformat, args)}
            shutil.rmtree(work, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for qformat in args.qformats.split(","):
        by_flow = {r["flow"]: r for r in rows if r["qformat"] == qformat}
        ref = by_flow.get("modelopt")
        for ours in (by_flow.get("ours"), by_flow.get("ours-trtllm")):
            if ours and ref and "wall_s" in ours and "wall_s" in ref:
                ours["wall_ratio"] = round(ours["wall_s"] / ref["wall_s"], 3)
                ours["gpu_memory_ratio"] = round(ours["peak_gpu_gib"] / ref["peak_gpu_gib"], 3)
    header = "| qformat | flow | wall s | ratio | peak GPU GiB | ratio | peak RSS GiB | stages (s) |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        stages = ", ".join(f"{k} {v}" for k, v in r.get("stages", {}).items()) or r.get("error", "")
        lines.append(f"| {r['qformat']} | {r['flow']} | {r.get('wall_s', '')} | {r.get('wall_ratio', '')} | "
                     f"{r.get('peak_gpu_gib', '')} | {r.get('gpu_memory_ratio', '')} | {r.get('peak_rss_gib', '')} | "
                     f"{stages} |")
    env = _environment()
    title = (f"gpu_scale: {args.shape}, calibration {args.calib_size}x{args.calib_seq_len} tokens, {env['gpu']}, "
             f"driver {env['driver']}, torch {env['torch']}, modelopt {env['modelopt']}")
    print(title + "\n" + "\n".join(lines))
    save_report(args.out, "gpu_scale", {"environment": env, "shape": args.shape, "rows": rows,
                                        "calibration": [args.calib_size, args.calib_seq_len]},
                title + "\n\n" + "\n".join(lines) + "\n", _chart(rows))


if __name__ == "__main__":
    main()

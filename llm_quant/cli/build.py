"""`llm-quant build | eval`: thin typer commands over llm_quant.pipeline."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import typer

from llm_quant.config import DEVICES, BuildConfig
from llm_quant.model.presets import available_presets
from llm_quant.pipeline import build, evaluate, make_config
from quant_common import qformats
from quant_common.cli import handle_errors, print_json
from quant_common.errors import QuantError
from quant_common.stability import summary_line

BUILD_HELP = """Quantize a Llama-family model with modelopt and write a TensorRT-LLM checkpoint, a HF checkpoint,
the embedded PyTorch runtime, the engine (where TensorRT-LLM <=1.2 is installed; else the command to run) and a
Triton model repository.

Examples:

  llm-quant build --model llama --qformat int8_sq --out out/llama

  llm-quant build --model llama --qformat fp8 --kv-cache-dtype fp8 --accuracy-budget 1 --out out/llama-fp8

  llm-quant build --model llama --model-path ~/models/Llama-3.2-1B --qformat int4_awq --tp-size 2

  llm-quant build --model ./my-hf-folder --qformat int8_sq --calib-file corpus.jsonl --json
"""

EVAL_HELP = """Perplexity of the full-precision and the quantized model on the same held-out token windows.

Examples:

  llm-quant eval --model llama --qformat int8_sq

  llm-quant eval --model llama --qformat fp8 --accuracy-budget 1 --text held_out.txt --json
"""


_PRESETS = available_presets()


def _common(model: str, model_path: str | None, qformat: str, kv_cache_dtype: str | None,
            smoothquant_alpha: float | None, sq_activations: str | None, sq_alpha_search: bool | None,
            accuracy_budget: float | None, calib_dataset: str | None,
            calib_file: list[Path] | None, calib_size: int | None, calib_seq_len: int | None,
            batch_size: int | None, eval_seq_len: int | None, eval_tokens: int | None, device: str,
            extra: dict[str, Any] | None = None, parallel: dict[str, Any] | None = None
            ) -> tuple[BuildConfig, Path, str]:
    qformats.qformat(qformat)
    if kv_cache_dtype is not None:
        qformats.kv_format(kv_cache_dtype)
    if device not in DEVICES:
        raise QuantError(f"unknown --device {device!r}", f"choose {qformats.either(DEVICES)}")
    calib = {k: v for k, v in {"dataset": calib_dataset, "files": calib_file or None, "size": calib_size,
                               "seq_len": calib_seq_len, "batch_size": batch_size}.items() if v is not None}
    eval_opts = {k: v for k, v in {"seq_len": eval_seq_len, "max_tokens": eval_tokens}.items() if v is not None}
    overrides = {"qformat": qformat, "kv_cache_dtype": kv_cache_dtype, "smoothquant_alpha": smoothquant_alpha,
                 "sq_activations": sq_activations, "sq_alpha_search": sq_alpha_search,
                 "accuracy_budget": accuracy_budget, "device": device, **(extra or {})}
    try:
        return make_config(model, model_path=model_path, overrides=overrides, calib=calib, eval_opts=eval_opts,
                           parallel=parallel)
    except ValueError as exc:  # pydantic validation of a flag value
        errors: list[Any] = getattr(exc, "errors", lambda: [])()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "option"
        message = errors[0]["msg"] if errors else str(exc).splitlines()[0]
        if errors and not where:  # a check across options (model_validator): its message says it all
            raise QuantError(message.removeprefix("Value error, "), "see llm-quant build --help") from exc
        raise QuantError(f"invalid {where}: {message}", "see llm-quant build --help") from exc


_MODEL = typer.Option("llama", "--model", "-m",
                      help=f"preset name ({', '.join(_PRESETS)}), HF folder or hub id")
_MODEL_PATH = typer.Option(None, "--model-path", help="HF folder or hub id replacing the preset's default model")
_QFORMAT = typer.Option(qformats.DEFAULT_QFORMAT, "--qformat", "-q", help=qformats.qformat_help())
_KV = typer.Option(None, "--kv-cache-dtype", help=qformats.kv_help())
_ALPHA = typer.Option(None, "--smoothquant-alpha", help="SmoothQuant migration strength (int8_sq), 0-1")
_SQ_ACT = typer.Option(None, "--sq-activations",
                       help="int8_sq activations: per_token (dynamic, one scale per token row) or per_tensor "
                            "(static, modelopt's INT8_SMOOTHQUANT_CFG); default from the preset")
_SQ_SEARCH = typer.Option(None, "--sq-alpha-search/--sq-alpha-global",
                          help="int8_sq: search the SmoothQuant alpha per layer on the calibration data, or use "
                               "one alpha (--smoothquant-alpha; else 0.5 for per_token, modelopt's for per_tensor); "
                               "default from the preset")
_BUDGET = typer.Option(None, "--accuracy-budget", metavar="PCT",
                       help="max perplexity increase (%); the costliest layers stay in higher precision")
_RULE = typer.Option("ci", "--budget-rule",
                     help="a linear set meets --accuracy-budget when: ci = the upper end of its search-split "
                          "change's 95 % interval does | point = the measured change does")
_STABILITY = typer.Option(0, "--calib-stability", metavar="K",
                          help="also calibrate on K seeded half-subsets of the calibration samples and report each "
                               "quantizer's amax spread (K recalibrations; 0 = off)")
_THRESHOLD = typer.Option(0.1, "--stability-threshold",
                          help="flag a quantizer whose amax moves by more than this fraction over the subsets")
_CALIB_DS = typer.Option(None, "--calib-dataset", help="'mixed' (offline default: prose, code, technical docs), 'pydoc', or a hub dataset "
                                                 "(cnn_dailymail)")
_CALIB_FILE = typer.Option(None, "--calib-file", help="local .txt/.jsonl/.parquet calibration text (repeatable)")
_CALIB_SIZE = typer.Option(None, "--calib-size", help="calibration sequences (preset default)")
_CALIB_LEN = typer.Option(None, "--calib-seq-len", help="tokens per calibration sequence")
_BATCH = typer.Option(None, "--batch-size", help="calibration batch size")
_EVAL_LEN = typer.Option(None, "--eval-seq-len", help="perplexity window length")
_EVAL_TOKENS = typer.Option(None, "--eval-tokens", help="held-out tokens to evaluate")
_DEVICE = typer.Option("auto", "--device", help="auto (GPU when present), cpu or cuda")
_JSON = typer.Option(False, "--json", help="print one JSON object instead of text")
_OUT = typer.Option(Path("out/llm"), "--out", "-o", help="output directory (staged, swapped in when complete)")
_TEXT = typer.Option(None, "--text", help="held-out text file (default: the corpus' eval split)")
_BUILD_TEXT = typer.Option(None, "--text", help="your own held-out text: with --accuracy-budget, the budget's "
                                                "outcome is reported on it beside the corpus' splits")


def _alphas(report: dict[str, Any] | None) -> str:
    """'0.5' / 'per layer 0.3-0.8' / "modelopt's" for the build summary."""
    alphas = sorted(set((report or {}).get("alpha", {}).values()))
    if not alphas:
        return "modelopt's"
    if (report or {}).get("searched"):
        return f"per layer {alphas[0]}-{alphas[-1]} ({len((report or {})['alpha'])} input groups)"
    return ", ".join(str(a) for a in alphas)


def register(app: typer.Typer) -> None:
    @app.command("build", help=BUILD_HELP)
    @handle_errors
    def build_cmd(
        model: str = _MODEL, model_path: str = _MODEL_PATH, qformat: str = _QFORMAT, kv_cache_dtype: str = _KV,
        smoothquant_alpha: float = _ALPHA, sq_activations: str = _SQ_ACT, sq_alpha_search: bool = _SQ_SEARCH,
        accuracy_budget: float = _BUDGET, calib_dataset: str = _CALIB_DS,
        calib_file: list[Path] = _CALIB_FILE, calib_size: int = _CALIB_SIZE, calib_seq_len: int = _CALIB_LEN,
        batch_size: int = _BATCH, eval_seq_len: int = _EVAL_LEN, eval_tokens: int = _EVAL_TOKENS,
        device: str = _DEVICE,
        tp_size: int = typer.Option(None, "--tp-size", help="tensor parallelism of the checkpoint"),
        pp_size: int = typer.Option(None, "--pp-size", help="pipeline parallelism of the checkpoint"),
        dtype: str = typer.Option(None, "--dtype", help="checkpoint dtype: float16, bfloat16, float32 (default: the model's own dtype; float32 models get float16, as in TensorRT-LLM)"),
        out: Path = _OUT,
        engine: bool = typer.Option(True, "--engine/--no-engine", help="run trtllm-build where available"),
        trtllm_version: str = typer.Option(None, "--trtllm-version",
                                           help="TensorRT-LLM the trtllm-build command is written for when none is "
                                                "installed (default: a command every release 0.16-1.2 accepts)"),
        triton_runtime: str = typer.Option("auto", "--triton-runtime",
                                           help="auto, tensorrtllm, pytorch or llmapi"),
        hf_checkpoint: bool = typer.Option(True, "--hf-checkpoint/--no-hf-checkpoint",
                                           help="also write the Hugging Face (unified) checkpoint that TensorRT-LLM's "
                                                "PyTorch backend, vLLM and SGLang load"),
        budget_rule: str = _RULE, calib_stability: int = _STABILITY, stability_threshold: float = _THRESHOLD,
        text: Path = _BUILD_TEXT,
        as_json: bool = _JSON,
    ) -> None:
        parallel = {k: v for k, v in {"tp_size": tp_size, "pp_size": pp_size}.items() if v is not None}
        extra = {"out": out, "build_engine": engine, "triton_runtime": triton_runtime,
                 "trtllm_version": trtllm_version, "budget_rule": budget_rule, "calib_stability": calib_stability,
                 "stability_threshold": stability_threshold, "hf_checkpoint": hf_checkpoint}
        if dtype is not None:
            extra["dtype"] = dtype
        with contextlib.redirect_stdout(sys.stderr):
            cfg, _, source = _common(model, model_path, qformat, kv_cache_dtype, smoothquant_alpha, sq_activations,
                                     sq_alpha_search, accuracy_budget,
                                     calib_dataset, calib_file, calib_size, calib_seq_len, batch_size,
                                     eval_seq_len, eval_tokens, device, extra=extra, parallel=parallel)
        with contextlib.redirect_stdout(sys.stderr):  # modelopt/transformers print; stdout is for results
            result = build(cfg, model_source=source, text_file=text)
        if as_json:
            print_json(result.to_dict())
            return
        lines = [
            f"model            {result.model_source}",
            f"quant_algo       {result.quant_algo} (kv cache: {result.kv_cache_quant_algo})",
            *([f"smoothquant      {result.sq_activations} activations, alpha {_alphas(result.smoothquant)}"]
              if result.sq_activations else []),
            f"checkpoint       {result.trtllm_checkpoint}",
            f"hf checkpoint    {result.hf_checkpoint or result.hf_checkpoint_skipped}",
            f"embedded runtime {result.embedded}",
            f"triton repo      {result.triton_repo}",
            f"higher precision {result.linears_kept_high_precision} linears {result.exclude_modules or ''}",
            f"quantized share  {result.quantized_weight_share:.3f} of decoder-linear weights",
            f"calibration      {calibration_text(result.calibration)}",
        ]
        if result.search:
            lines.append(f"search split     Δ perplexity {search_text(result.search)}")
        for split, row in result.held_out.items():
            lines.append(f"held-out {split:<7} Δ perplexity {delta_text(row)} on {row['text']} "
                         f"({row['tokens']} tokens)")
        if result.budget_summary:
            lines.append(f"budget           {result.budget_summary.removeprefix('accuracy budget ')}")
        if result.calib_stability:
            stab = result.calib_stability
            lines.append(f"scale stability  {summary_line(stab, 'quantizers', 'samples')} "
                         f"({stab['seconds_per_subset']:.0f} s per subset; plain calibration "
                         f"{stab['plain_calibration_seconds']:.0f} s)")
        if result.exclusion_warning:
            lines.append(f"warning          {result.exclusion_warning}")
        if result.install_warning:
            lines.append(f"warning          {result.install_warning}")
        if result.engine_status == "built":
            lines.append(f"engine           {result.engine}")
        else:
            lines.append(f"engine           skipped: {result.engine_skip_reason}. Where TensorRT-LLM <=1.2 is "
                         f"installed, run:\n  {result.engine_command}")
        lines.append(f"manifest         {result.manifest}  ({sum(result.timings.values()):.1f} s)")
        sys.stdout.write("\n".join(lines) + "\n")

    @app.command("eval", help=EVAL_HELP)
    @handle_errors
    def eval_cmd(
        model: str = _MODEL, model_path: str = _MODEL_PATH, qformat: str = _QFORMAT, kv_cache_dtype: str = _KV,
        smoothquant_alpha: float = _ALPHA, sq_activations: str = _SQ_ACT, sq_alpha_search: bool = _SQ_SEARCH,
        accuracy_budget: float = _BUDGET, text: Path = _TEXT,
        calib_dataset: str = _CALIB_DS, calib_file: list[Path] = _CALIB_FILE, calib_size: int = _CALIB_SIZE,
        calib_seq_len: int = _CALIB_LEN, batch_size: int = _BATCH, eval_seq_len: int = _EVAL_LEN,
        eval_tokens: int = _EVAL_TOKENS, device: str = _DEVICE, budget_rule: str = _RULE, as_json: bool = _JSON,
    ) -> None:
        cfg, _, _ = _common(model, model_path, qformat, kv_cache_dtype, smoothquant_alpha, sq_activations,
                            sq_alpha_search, accuracy_budget,
                            calib_dataset, calib_file, calib_size, calib_seq_len, batch_size, eval_seq_len,
                            eval_tokens, device, extra={"budget_rule": budget_rule})
        with contextlib.redirect_stdout(sys.stderr):
            report = evaluate(cfg, text_file=text)
        if as_json:
            print_json(report.to_dict())
            return
        sys.stdout.write(
            f"perplexity  reference {report.ppl_ref:.3f}  {qformat} {report.ppl_quant:.3f}  "
            f"Δ {delta_text(report.to_dict())}  ({report.tokens} tokens, {report.windows}×{report.seq_len}) "
            f"on {report.text}\n"
            + (f"held-out domain: Δ {delta_text(report.heldout)} on {report.heldout['text']} "
               f"({report.heldout['tokens']} tokens)\n" if report.heldout else "")
            + (f"search split: Δ {search_text(report.search)}\n" if report.search else "")
            + (f"{report.budget_summary}\n" if report.budget_summary else "")
            + f"quantized weight share: {report.quantized_weight_share:.3f} "
            f"({report.linears_kept_high_precision} linears kept in higher precision)\n"
            + f"calibration: {calibration_text(report.calibration)}\n"
            + f"95 % intervals: seeded paired bootstrap over {report.ci['units']} ({report.ci['count']} on "
              f"{report.text})\n"
            + (f"smoothquant: {report.sq_activations} activations, alpha {_alphas(report.smoothquant)}\n"
               if report.sq_activations else ""))


def delta_text(row: dict[str, Any]) -> str:
    """``+1.23 % [+0.40, +2.05]``: a perplexity change with its 95 % interval."""
    lo, hi = row["delta_pct_ci95"]
    return f"{row['delta_pct']:+.2f} % [{lo:+.2f}, {hi:+.2f}]"


def search_text(search: dict[str, Any]) -> str:
    rule = "its 95 % upper end" if search["rule"] == "ci" else "the measured change"
    return (f"{delta_text(search)} with {search['units_kept']} units kept ({rule} within the target "
            f"{search['target_pct']:.2f} %: {'met' if search['met'] else 'NOT met'}) on {search['text']}")


def calibration_text(counts: dict[str, Any]) -> str:
    """What calibration actually consumed (``llm_quant.data.documents.calibration_counts``)."""
    text = (f"{counts['samples']} samples x {counts['seq_len']} tokens = {counts['tokens']} tokens of "
            f"{counts['text_tokens']} in the calibration split")
    if counts["capped_by_text"]:
        text += f" (asked for {counts['requested_samples']}: the text holds no more whole samples)"
    return text

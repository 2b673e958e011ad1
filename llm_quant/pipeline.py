"""``build(cfg) -> BuildResult`` and ``evaluate(cfg) -> EvalReport``: the LLM pipeline as a library API.

build: resolve model -> calibration text -> (accuracy-budget layer search) -> modelopt calibration ->
embedded runtime artifact, TensorRT-LLM checkpoint (corrected, verified), HF checkpoint -> engine (or the
skipped command) -> Triton repository -> build.json. Everything is built in a staging directory beside
``--out`` and swapped in whole, so a failed build leaves the previous output (or nothing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_quant.calibration import calibrate
from llm_quant.calibration.exclusions import exclusions_ignored_by, quantized_weight_share
from llm_quant.calibration.stability import calibration_stability
from llm_quant.config import BuildConfig, CalibConfig, EvalConfig, ParallelConfig, Preset
from llm_quant.data import documents
from llm_quant.evaluation.perplexity import EvalReport, budget_line, compare, delta_row, perplexity
from llm_quant.evaluation.sensitivity import SearchResult, search_exclusions
from llm_quant.export import checkpoints, engine
from llm_quant.model import preflight
from llm_quant.model.presets import available_presets, is_preset, load_preset, preset_for_model_type
from llm_quant.model.resolve import resolve_model
from llm_quant.runtime import embedded
from llm_quant.upstream import expected_algorithms, refuse_unsupported
from llm_quant.upstream.install import check_environment
from quant_common import qformats
from quant_common.atomic import Staging, atomic_write_json, ensure_output_dir, staged_dir
from quant_common.errors import QuantError
from quant_common.manifest import Timings, package_versions, tree_hashes, utc_now
from triton_backend.repository import RepositoryResult, package_for_build

MANIFEST = "build.json"
VERSIONS = ("torch", "transformers", "nvidia-modelopt", "datasets", "safetensors", "tensorrt-llm", "tritonclient")


def make_config(model: str, *, model_path: str | None = None, overrides: dict[str, Any] | None = None,
                calib: dict[str, Any] | None = None, eval_opts: dict[str, Any] | None = None,
                parallel: dict[str, Any] | None = None) -> tuple[BuildConfig, Path, str]:
    """Preset + flags -> (config, resolved local model folder, model source). Resolves/converts the model."""
    overrides = {k: v for k, v in (overrides or {}).items() if not (k in _PRESET_DEFAULTED and v is None)}
    row = qformats.qformat(overrides.get("qformat", qformats.DEFAULT_QFORMAT))  # unknown qformat: fail before heavy work
    if not row.smoothquant and overrides.get("sq_activations", "per_tensor") != "per_tensor":
        raise QuantError(f"--sq-activations {overrides['sq_activations']} applies to --qformat int8_sq only",
                         "drop --sq-activations")
    if is_preset(model):
        preset = load_preset(model)
        resolved = resolve_model(model_path or preset.source)
        _check_model_type(resolved.path, preset)
    elif model_path is not None:
        raise QuantError(f"unknown preset {model!r} (with --model-path)", "pass --model <preset> --model-path DIR")
    elif "/" not in model and not Path(model).exists():
        raise QuantError(f"unknown preset {model!r}", f"choose one of {', '.join(available_presets())}, "
                         "or pass a model folder or a hub id (org/name)")
    else:
        resolved = resolve_model(model)
        preset = preset_for_model_type(_model_type(resolved.path))
    cfg = BuildConfig(
        preset=preset,
        model_path=Path(resolved.path),
        calibration=CalibConfig.model_validate({**preset.calibration.model_dump(), **(calib or {})}),
        eval=EvalConfig.model_validate({**preset.eval.model_dump(), **(eval_opts or {})}),
        parallel=ParallelConfig.model_validate({**preset.parallel.model_dump(), **(parallel or {})}),
        # "auto" (the presets' default): the model's own dtype, as TensorRT-LLM's conversion picks it
        dtype=_checkpoint_dtype(overrides.pop("dtype", None) or preset.dtype, Path(resolved.path)),
        # int8_sq choices the preset defaults; other qformats have no SmoothQuant activations to choose
        sq_activations=overrides.pop("sq_activations", None) or (preset.sq_activations if row.smoothquant
                                                                  else "per_tensor"),
        sq_alpha_search=overrides.pop("sq_alpha_search", preset.sq_alpha_search),
        **overrides,
    )
    calibrate.check_qformat_device(cfg.qformat, calibrate.pick_device(cfg.device))
    return cfg, resolved.path, resolved.source


def check_gpu(cfg: BuildConfig) -> preflight.PreflightReport:
    """The visible GPU runs the formats and holds the model (``llm_quant.model.preflight``); before any weight loads."""
    assert cfg.model_path is not None
    device = calibrate.pick_device(cfg.device)
    return preflight.preflight(cfg.model_path, cfg.qformat, cfg.kv_cache_dtype, device=device,
                               load_dtype=calibrate.compute_dtype(device))


def _checkpoint_dtype(requested: str, model_dir: Path) -> str:
    return preflight.checkpoint_dtype(model_dir) if requested == "auto" else requested


_PRESET_DEFAULTED = ("sq_activations", "sq_alpha_search")  # None from the CLI: the preset's value


def _model_type(path: Path) -> str:
    return str(json.loads((path / "config.json").read_text()).get("model_type", ""))


def _check_model_type(path: Path, preset: Preset) -> None:
    model_type = _model_type(path)
    refuse_unsupported(model_type)
    if model_type not in preset.model_types:
        raise QuantError(f"model {path} is a {model_type!r} model; preset {preset.name!r} takes "
                         f"{', '.join(preset.model_types)}", "choose the matching preset or pass the folder as --model")


@dataclass
class Prepared:
    model_dir: Path
    device: str
    dtype: str  # compute dtype of calibration / embedded runtime
    tokenizer: Any
    calib_batches: list[Any]
    search_windows: Any
    eval_windows: Any
    texts: dict[str, str] = field(default_factory=dict)  # split -> which text it is (build.json, --json)
    heldout_windows: Any = None  # a domain neither calibration nor the search saw (None: the data has none)
    calib_counts: dict[str, Any] = field(default_factory=dict)  # what calibration consumes (documents)
    text_windows: Any = None  # build --text: the user's own held-out text, beside the splits


def prepare(cfg: BuildConfig, *, eval_docs: list[str] | None = None, eval_label: str | None = None,
            text_file: Path | None = None) -> Prepared:
    assert cfg.model_path is not None
    device = calibrate.pick_device(cfg.device)
    tokenizer = calibrate.load_tokenizer(cfg.model_path)
    docs = documents.load_documents(cfg.calibration)
    slots = documents.search_slots(cfg.calibration)
    calib_stream = documents.tokenize_split(docs, tokenizer, "calib", slots)
    batches = documents.calibration_batches(calib_stream, cfg.calibration)
    search = documents.tokenize_split(docs, tokenizer, "search", slots).windows(cfg.eval.seq_len,
                                                                           max_tokens=cfg.eval.max_tokens // 2)
    # eval --text FILE: the whole file is held out; otherwise the corpus' eval split
    eval_stream = documents.tokenize_documents(eval_docs, tokenizer) if eval_docs is not None else \
        documents.tokenize_split(docs, tokenizer, "eval", slots)
    texts = {split: documents.describe_split(cfg.calibration, split) for split in ("calib", "search", "eval")}
    if eval_docs is not None:
        texts["eval"] = eval_label or "--text file"
    heldout, heldout_windows = documents.heldout_text(cfg.calibration), None
    if heldout is not None:
        texts["heldout"] = heldout[0]
        heldout_windows = documents.tokenize_documents(heldout[1], tokenizer).windows(cfg.eval.seq_len,
                                                                                 max_tokens=cfg.eval.max_tokens)
    text_windows = None
    if text_file is not None:
        texts["text"] = f"{text_file} (--text)"
        text_windows = documents.tokenize_documents(documents.read_text_file(text_file), tokenizer).windows(
            cfg.eval.seq_len, max_tokens=cfg.eval.max_tokens)
        if len(text_windows) == 0:
            raise QuantError(f"{text_file} has fewer than {cfg.eval.seq_len} tokens",
                             "pass a longer --text file or lower --eval-seq-len")
    return Prepared(cfg.model_path, device, calibrate.compute_dtype(device), tokenizer, batches, search,
                    eval_stream.windows(cfg.eval.seq_len, max_tokens=cfg.eval.max_tokens), texts, heldout_windows,
                    documents.calibration_counts(calib_stream, batches, cfg.calibration), text_windows)


def held_out_deltas(prep: Prepared, model: Any, reference: Any | None = None,
                    budget: float | None = None) -> dict[str, dict[str, Any]]:
    """Perplexity change with its 95 % interval on every held-out text (the eval split or eval's --text; the unseen
    domain; build's --text), each labelled, and with a budget whether it held there
    (``llm_quant.evaluation.perplexity.delta_row``)."""
    if reference is None:
        reference = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
    out: dict[str, dict[str, Any]] = {}
    for split, windows in (("eval", prep.eval_windows), ("heldout", prep.heldout_windows),
                           ("text", prep.text_windows)):
        if windows is None or len(windows) == 0:
            continue
        ref = perplexity(reference, windows, description=f"reference ({split})")
        quant = perplexity(model, windows, description=f"quantized ({split})")
        out[split] = delta_row(prep.texts[split], ref, quant, budget)
    return out


def quantize_model(cfg: BuildConfig, prep: Prepared, timings: Timings, for_checkpoint: bool = False,
                   loaded: dict[str, Any] | None = None) -> tuple[Any, SearchResult | None]:
    """Calibrated model; with an accuracy budget, the costliest linears stay in higher precision.
    ``for_checkpoint``: only exclusions the TensorRT-LLM checkpoint can express (none for per-token int8_sq).
    ``loaded``: filled with the weights' fingerprints as loaded, before calibration (``embedded.weight_fingerprints``)."""
    kwargs = calibrate.quantize_options(cfg)
    search = None
    exclude: list[str] = []
    # per-token int8_sq: the budget is checked on the uniform model only (no exclusions possible, see sq_checkpoint)
    per_token = for_checkpoint and qformats.qformat(cfg.qformat).smoothquant and cfg.sq_activations == "per_token"
    if cfg.accuracy_budget is not None and cfg.qformat != "full_prec":
        if len(prep.search_windows) == 0:
            raise QuantError("the calibration text has no held-out search split for --accuracy-budget",
                             "use more calibration text or lower --eval-seq-len")
        with timings.measure("layer_search"):
            model = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
            ref = perplexity(model, prep.search_windows, description="reference (search split)")
            model = calibrate.quantize(model, cfg.qformat, prep.calib_batches, **kwargs)
            search = search_exclusions(model, prep.search_windows, ref, cfg.accuracy_budget,
                                       may_exclude=not per_token, rule=cfg.budget_rule)
            exclude = search.excluded
            if per_token and not search.met:
                uniform_pct = 100.0 * (search.ppl_uniform - ref.ppl) / ref.ppl
                raise QuantError(f"--accuracy-budget {cfg.accuracy_budget:g}: per-token int8_sq adds "
                                 f"{uniform_pct:+.2f} % perplexity on the search text (target {search.target_pct:.2f} "
                                 "%), and a per-token SmoothQuant checkpoint cannot keep linears in higher precision "
                                 "(TensorRT-LLM's SmoothQuant plugin path ignores exclude_modules)",
                                 "raise the budget, or use --sq-activations per_tensor to keep linears in higher "
                                 "precision (HF checkpoint and embedded runtime)")
            del model
    with timings.measure("load"):
        model = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
        if loaded is not None:
            loaded.update(embedded.weight_fingerprints(model))
    with timings.measure("calibrate"):
        model = calibrate.quantize(model, cfg.qformat, prep.calib_batches, exclude_modules=exclude, **kwargs)
    return model, search


@dataclass
class BuildResult:
    out: str
    model_source: str
    qformat: str
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    trtllm_checkpoint: str
    hf_checkpoint: str | None
    embedded: str
    engine: str | None
    engine_status: str
    engine_command: str
    engine_skip_reason: str | None
    triton_repo: str | None
    hf_checkpoint_skipped: str | None = None
    sq_activations: str | None = None  # int8_sq: per_tensor or per_token
    # int8_sq: the alpha chosen per input group (llm_quant.calibration.smoothing)
    smoothquant: dict[str, Any] | None = None
    exclude_modules: list[str] = field(default_factory=list)  # HF layers/linears kept in higher precision
    linears_kept_high_precision: int = 0
    quantized_weight_share: float = 0.0  # of decoder-linear parameters (1.0: uniform; lm_head not counted)
    # with --accuracy-budget: Δ with its 95 % interval and budget_held per text, and the one line naming each text
    # where the budget was exceeded
    held_out: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget_summary: str | None = None
    search: dict[str, Any] | None = None  # the search split's Δ of the chosen set, its interval and the rule
    calibration: dict[str, Any] = field(default_factory=dict)  # samples/tokens calibration actually consumed
    calib_stability: dict[str, Any] | None = None  # --calib-stability: amax spread per quantizer
    exclusion_warning: str | None = None
    install_warning: str | None = None  # TensorRT-LLM installed next to a modelopt/transformers pair not tested
    corrections: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    manifest: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_out(out: Path) -> None:
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise QuantError(f"output directory {out} is not empty and holds no previous build ({MANIFEST})",
                         "choose an empty or new --out directory")
    ensure_output_dir(out.parent if out.parent != Path("") else Path("."))


def build(cfg: BuildConfig, *, model_source: str = "", text_file: Path | None = None) -> BuildResult:
    """The whole build; ``text_file``: the user's own held-out text, on which an accuracy budget is reported too."""
    assert cfg.model_path is not None
    out = Path(cfg.out).resolve()
    checked = check_gpu(cfg)
    _check_out(out)
    install_warning = check_environment()  # refuses, before calibration, a modelopt its TensorRT-LLM excludes
    timings = Timings()
    with timings.measure("data"):
        prep = prepare(cfg, text_file=text_file)
    loaded: dict[str, Any] = {}
    model, search = quantize_model(cfg, prep, timings, for_checkpoint=True, loaded=loaded)
    exclude = search.excluded if search else []
    held_out: dict[str, dict[str, Any]] = {}
    if search is not None:  # the budget on text the search never saw, each number with its text
        with timings.measure("held_out_check"):
            held_out = held_out_deltas(prep, model, budget=cfg.accuracy_budget)
    stability = None
    if cfg.calib_stability:
        with timings.measure("calib_stability"):
            stability = calibration_stability(cfg, model, prep.calib_batches, prep.model_dir, prep.dtype, prep.device,
                                              exclude, plain_seconds=timings.get("calibrate", 0.0))
    with staged_dir(out) as tmp:
        staging = Staging(tmp, out)  # absolute paths written into artifacts name ``out``, not the staging folder
        with timings.measure("export_embedded"):
            embedded.save_embedded(model, prep.tokenizer, prep.model_dir, tmp / "embedded", qformat=cfg.qformat,
                                  dtype=prep.dtype, kv_cache_dtype=cfg.kv_cache_dtype, exclude_modules=exclude,
                                  sq_activations=cfg.sq_activations, loaded=loaded)
        with timings.measure("export_trtllm"):
            trt = checkpoints.export_trtllm(model, model.config, tmp / "trtllm_checkpoint",
                                       decoder_type=cfg.preset.decoder_type, dtype=cfg.dtype,
                                       tp_size=cfg.parallel.tp_size, pp_size=cfg.parallel.pp_size,
                                       exclude_modules=exclude, sq_activations=cfg.sq_activations,
                                       quant_algo=expected_algorithms(cfg.qformat, None, cfg.sq_activations)[0])
            _check_algorithms(trt["config"], cfg)
        hf_skip = hf_skip_reason(cfg)
        hf_export: dict[str, Any] = {"path": None, "ignore": [], "skipped": hf_skip}
        if hf_skip is None:
            with timings.measure("export_hf"):
                hf_export = checkpoints.export_hf(model, prep.tokenizer, tmp / "hf_checkpoint", dtype=cfg.dtype,
                                             exclude_modules=exclude)
        target, target_facts = engine.resolve_target(trt["config"].get("quantization", {}),
                                                     requested_version=cfg.trtllm_version)
        with timings.measure("engine"):
            eng = engine.build_engine(tmp / "trtllm_checkpoint", tmp / "engine", cfg.preset.trtllm_build,
                                      workers=cfg.parallel.tp_size * cfg.parallel.pp_size,
                                      log_path=tmp / "trtllm-build.log", enabled=cfg.build_engine,
                                      staging=staging, target=target)
        with timings.measure("triton"):
            triton_repo = package_triton(staging, cfg, eng, hf=hf_skip is None)
        quant = trt["config"].get("quantization", {})
        expected = expected_algorithms(cfg.qformat, cfg.kv_cache_dtype, cfg.sq_activations)
        sq_report = getattr(model, "smoothquant_report", None)
        result = BuildResult(
            out=str(out), model_source=model_source or str(cfg.model_path), qformat=cfg.qformat,
            quant_algo=quant.get("quant_algo"), kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
            trtllm_checkpoint=str(out / "trtllm_checkpoint"),
            hf_checkpoint=str(out / "hf_checkpoint") if hf_skip is None else None, hf_checkpoint_skipped=hf_skip,
            embedded=str(out / "embedded"), engine=eng.path, engine_status=eng.status,
            engine_command=eng.command_line, engine_skip_reason=eng.reason,
            triton_repo=str(staging.final_path(triton_repo.path)), exclude_modules=exclude,
            linears_kept_high_precision=len(exclude), quantized_weight_share=round(quantized_weight_share(model), 6),
            held_out=held_out, exclusion_warning=_exclusion_warning(quant.get("quant_algo"), exclude),
            budget_summary=budget_line(cfg.accuracy_budget, held_out) if search is not None and
            cfg.accuracy_budget is not None else None,
            search=search.summary(prep.texts["search"]) if search else None,
            calibration=prep.calib_counts, calib_stability=stability,
            install_warning=install_warning,
            corrections=trt["corrections"], timings=dict(timings), manifest=str(out / MANIFEST),
            sq_activations=cfg.sq_activations if qformats.qformat(cfg.qformat).smoothquant else None,
            smoothquant=sq_report.to_dict() if sq_report is not None else None)
        manifest = {
            "created": utc_now(), "tool": "llm-quant build", "config": cfg.model_dump(mode="json"),
            "preflight": checked.to_dict(),
            "result": result.to_dict(), "engine": eng.to_dict(), "engine_target": target_facts, "search": search.to_dict() if search else None,
            "hf_quantization_ignore": hf_export["ignore"], "texts": prep.texts,
            "expected_quant_algo": expected[0],
            "expected_kv_cache_quant_algo": expected[1],
            "versions": package_versions(VERSIONS),
            "hashes": tree_hashes(tmp, suffixes={".json", ".safetensors", ".pth"}),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return result


def _exclusion_warning(quant_algo: str | None, exclude: list[str]) -> str | None:
    if exclude and exclusions_ignored_by(quant_algo):
        return (f"TensorRT-LLM builds {quant_algo} engines without reading exclude_modules (smooth_quantize_plugin): "
                "the engine quantizes the excluded linears; the HF checkpoint and the embedded runtime keep them")
    return None


def _check_algorithms(config: dict[str, Any], cfg: BuildConfig) -> None:
    quant = config.get("quantization", {})
    expected = expected_algorithms(cfg.qformat, cfg.kv_cache_dtype, cfg.sq_activations)
    got = (quant.get("quant_algo"), quant.get("kv_cache_quant_algo"))
    if got != expected:
        raise QuantError(f"modelopt exported quant_algo/kv_cache_quant_algo {got} for --qformat {cfg.qformat} "
                         f"--kv-cache-dtype {cfg.kv_cache_dtype}, expected {expected}",
                         "this modelopt version maps formats differently; report it with build.json")


def hf_skip_reason(cfg: BuildConfig) -> str | None:
    """Why the HF checkpoint is not written (None: it is): not asked for, or what modelopt cannot express, in one
    line."""
    if not cfg.hf_checkpoint:
        return "HF checkpoint not written (--no-hf-checkpoint)"
    if qformats.qformat(cfg.qformat).smoothquant and cfg.sq_activations == "per_token":
        return ("HF checkpoint skipped: modelopt's HF format has no per-token INT8 activations (it writes int8_sq "
                "only as W8A8_SQ_PER_CHANNEL with a static input_scale); the TensorRT-LLM checkpoint carries them")
    if cfg.kv_cache_dtype is not None and not qformats.kv_format(cfg.kv_cache_dtype).hf_checkpoint:
        return (f"HF checkpoint skipped: modelopt cannot export a {cfg.kv_cache_dtype.upper()} KV cache to it "
                "(the TensorRT-LLM checkpoint carries it)")
    return None


def package_triton(staging: Staging, cfg: BuildConfig, eng: engine.EngineResult, *, hf: bool = True
                   ) -> RepositoryResult:
    """The single call site into the Triton helper's packaging (triton_backend.repository)."""
    build_dir = staging.root
    return package_for_build(build_dir, options=cfg.preset.triton, runtime=cfg.triton_runtime,
                             engine_dir=build_dir / "engine" if eng.status == "built" else None,
                             trtllm_checkpoint_dir=build_dir / "trtllm_checkpoint",
                             hf_checkpoint_dir=build_dir / "hf_checkpoint" if hf else None, final_build_dir=staging.final,
                             trtllm_version=cfg.trtllm_version)


def evaluate(cfg: BuildConfig, *, text_file: Path | None = None) -> EvalReport:
    """Perplexity of the full-precision and the quantized model on the same held-out token windows."""
    eval_docs = documents.read_text_file(text_file) if text_file is not None else None
    check_gpu(cfg)
    timings = Timings()
    prep = prepare(cfg, eval_docs=eval_docs, eval_label=f"{text_file} (--text)" if text_file else None)
    if len(prep.eval_windows) == 0:
        raise QuantError(f"the held-out text has fewer than {cfg.eval.seq_len} tokens",
                         "pass a longer --text file or lower --eval-seq-len")
    reference = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
    ref = perplexity(reference, prep.eval_windows, description="reference perplexity")
    ref_heldout = perplexity(reference, prep.heldout_windows, description="reference (held-out domain)") \
        if prep.heldout_windows is not None and len(prep.heldout_windows) else None
    del reference
    model, search = quantize_model(cfg, prep, timings)
    quant = perplexity(model, prep.eval_windows, description="quantized perplexity")
    exclude = search.excluded if search else []
    sq_report = getattr(model, "smoothquant_report", None)
    budget = cfg.accuracy_budget if search is not None else None
    rows = {"eval": delta_row(prep.texts["eval"], ref, quant, budget)}
    if ref_heldout is not None:
        q = perplexity(model, prep.heldout_windows, description="quantized (held-out domain)")
        rows["heldout"] = delta_row(prep.texts["heldout"], ref_heldout, q, budget)
    return compare(ref, quant, budget, windows=len(prep.eval_windows), seq_len=cfg.eval.seq_len, qformat=cfg.qformat,
                   text=prep.texts["eval"], quantized_weight_share=round(quantized_weight_share(model), 6),
                   linears_kept_high_precision=len(exclude), exclude_modules=exclude, heldout=rows.get("heldout"),
                   search=search.summary(prep.texts["search"]) if search else None,
                   sq_activations=cfg.sq_activations if qformats.qformat(cfg.qformat).smoothquant else None,
                   smoothquant=sq_report.to_dict() if sq_report is not None else None,
                   budget_summary=budget_line(budget, rows) if budget is not None else None,
                   calibration=prep.calib_counts)


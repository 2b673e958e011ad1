"""Load a HF causal LM and calibrate it with modelopt: the only caller of ``mtq.quantize``.

The modelopt config comes from the format table (``quant_common.qformats``): the qformat's preset, the KV-cache
entries, the SmoothQuant alpha, the INT4 group size and the layers kept in higher precision.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from llm_quant.calibration import per_token, smoothing
from llm_quant.calibration.exclusions import modelopt_pattern
from llm_quant.config import BuildConfig
from llm_quant.upstream import trtllm_facts
from quant_common import qformats
from quant_common.errors import QuantError, require
from quant_common.progress import track

MODELOPT_INSTALL = "pip install nvidia-modelopt requests"  # modelopt.torch.quantization imports requests undeclared


def pick_device(requested: str) -> str:
    torch = require("torch", purpose="LLM calibration")
    has_cuda = bool(torch.cuda.is_available())
    if requested == "cuda" and not has_cuda:
        raise QuantError("--device cuda was requested but no CUDA GPU is visible", "use --device auto or cpu")
    return "cuda" if requested in {"auto", "cuda"} and has_cuda else "cpu"


def compute_dtype(device: str) -> str:
    """float32 on CPU (half-precision matmuls are slow or missing there); bfloat16 on GPU."""
    return "bfloat16" if device == "cuda" else "float32"


def load_model(path: Path, *, dtype: str, device: str) -> Any:
    torch = require("torch", purpose="loading the model")
    transformers = require("transformers", purpose="loading the model")
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if device == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"  # large models: spread layers over every visible GPU
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - unsupported architecture, corrupt weights: one line
        raise QuantError(f"cannot load the model from {path} ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                         "pass a Hugging Face causal LM checkpoint folder") from exc
    if "device_map" not in kwargs:
        model = model.to(device)
    if not getattr(model.config, "architectures", None):
        # modelopt's export_hf_checkpoint fails without config.architectures (some checkpoints omit it)
        model.config.architectures = [type(model).__name__]
    return model.eval()


def load_tokenizer(path: Path) -> Any:
    transformers = require("transformers", purpose="loading the tokenizer")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001
        raise QuantError(f"cannot load the tokenizer from {path} ({exc.__class__.__name__})",
                         "save the tokenizer into the model folder") from exc


def check_qformat_device(qformat: str, device: str) -> None:
    if qformats.qformat(qformat).needs_cuda and device != "cuda":
        raise QuantError(f"--qformat {qformat} needs a CUDA GPU (modelopt's {qformat} kernels are GPU-only) "
                         "and none is visible", f"run on a GPU machine or choose {qformats.cpu_alternatives()}")


def layer_pattern(module: str) -> str:
    """modelopt wildcard covering every quantizer of one module subtree: a layer ('model.layers.3') or one linear
    ('model.layers.3.mlp.down_proj')."""
    return modelopt_pattern(module)


def modelopt_config(qformat: str, *, kv_cache_dtype: str | None = None, smoothquant_alpha: float | None = None,
                    exclude_layers: list[str] | tuple[str, ...] = (), block_size: int | None = None,
                    exclude_modules: list[str] | tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The modelopt quantize config for ``qformat`` (a deep copy; None for full precision).

    ``exclude_modules`` (HF layer or linear names) and ``exclude_layers`` (its older name) stay unquantized."""
    row = qformats.qformat(qformat)
    kv = qformats.kv_format(kv_cache_dtype) if kv_cache_dtype is not None else None
    if not row.quantized:
        if kv is not None:
            raise QuantError("--kv-cache-dtype needs a quantized --qformat", "drop it or choose a qformat")
        return None
    if smoothquant_alpha is not None and not row.smoothquant:
        raise QuantError(f"--smoothquant-alpha applies to --qformat "
                         f"{qformats.either([r.name for r in qformats.QFORMAT_ROWS if r.smoothquant])} only", "drop it")
    mtq = require("modelopt.torch.quantization", purpose="LLM quantization", install=MODELOPT_INSTALL)
    cfg = copy.deepcopy(_preset(mtq, str(row.modelopt_cfg), f"--qformat {qformat}"))
    # modelopt 0.47 keeps quant_cfg as a list of {"quantizer_name", "cfg" | "enable"} entries; 0.37 (the one
    # TensorRT-LLM 1.2 pins) as a {pattern: attributes} dict. Later entries win in both.
    entries = cfg["quant_cfg"]
    if smoothquant_alpha is not None:
        cfg["algorithm"] = {"method": "smoothquant", "alpha": float(smoothquant_alpha)}
    if kv is not None:
        if kv.modelopt_cfg is not None:
            _add(entries, copy.deepcopy(_preset(mtq, kv.modelopt_cfg, f"--kv-cache-dtype {kv.name}")["quant_cfg"]))
        _add(entries, copy.deepcopy(list(kv.quant_cfg)))
    if block_size is not None:
        _set_block_size(entries, block_size)
    for module in dict.fromkeys([*exclude_layers, *exclude_modules]):
        _add(entries, [{"quantizer_name": layer_pattern(module), "enable": False}])
    return cfg


def _preset(mtq: Any, name: str, what: str) -> Any:
    if not hasattr(mtq, name):
        version = getattr(require("modelopt", purpose="LLM quantization"), "__version__", "?")
        raise QuantError(f"{what} needs modelopt's {name}, which nvidia-modelopt {version} does not have",
                         "choose another format or install a nvidia-modelopt that has it (0.47 does)")
    return getattr(mtq, name)


def _add(entries: list[dict[str, Any]] | dict[str, Any], new: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Append quant_cfg entries, whichever form (list or dict) modelopt uses for ``entries`` and ``new``."""
    items = list(new.items()) if isinstance(new, dict) else [
        (e["quantizer_name"], e["cfg"] if "cfg" in e else {"enable": e["enable"]}) for e in new]
    for pattern, attributes in items:
        if isinstance(entries, dict):
            entries[pattern] = attributes
        elif isinstance(attributes, dict) and set(attributes) == {"enable"}:
            entries.append({"quantizer_name": pattern, "enable": attributes["enable"]})
        else:
            entries.append({"quantizer_name": pattern, "cfg": attributes})


def quant_cfg_entries(cfg: dict[str, Any]) -> list[tuple[str, Any]]:
    """``cfg["quant_cfg"]`` as (pattern, attributes) pairs in order, whichever form this modelopt uses."""
    entries = cfg["quant_cfg"]
    if isinstance(entries, dict):
        return list(entries.items())
    return [(e["quantizer_name"], e["cfg"] if "cfg" in e else {"enable": e["enable"]}) for e in entries]


def _set_block_size(entries: list[dict[str, Any]] | dict[str, Any], block_size: int) -> None:
    """INT4 group size along the input dimension (modelopt's default 128 does not divide e.g. hidden 576)."""
    attributes = list(entries.values()) if isinstance(entries, dict) else [e.get("cfg") for e in entries]
    for cfgs in attributes:
        for cfg in cfgs if isinstance(cfgs, list) else [cfgs] if isinstance(cfgs, dict) else []:
            blocks = cfg.get("block_sizes")
            if isinstance(blocks, dict):
                key = -1 if -1 in blocks else "-1" if "-1" in blocks else None
                if key is not None:
                    blocks[key] = block_size


def int4_group_sizes(qformat: str) -> tuple[int, ...]:
    """INT4 group sizes TensorRT-LLM takes for ``qformat``'s quant_algo, largest first (``trtllm_build.yaml``:
    128/64 for W4A16_AWQ, 128 only for W4A8_AWQ; 32 is not among them)."""
    return trtllm_facts().group_sizes_for(str(qformats.qformat(qformat).quant_algo))


def int4_block_size(model: Any, qformat: str = "int4_awq") -> int:
    """Largest INT4 group size TensorRT-LLM takes for ``qformat`` that divides every decoder linear's input size
    (SmolLM2's 576 needs 64, so w4a8_awq is refused there)."""
    torch = require("torch", purpose="calibration")
    sizes = {m.in_features for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"}
    allowed = int4_group_sizes(qformat)
    for block in allowed:
        if all(size % block == 0 for size in sizes):
            return block
    raise QuantError(f"--qformat {qformat}: no INT4 group size TensorRT-LLM takes for it ({', '.join(map(str, allowed))})"
                     f" divides the linear input sizes {sorted(sizes)}",
                     f"choose {qformats.cpu_alternatives(int4_blocks=False)}"
                     + (" or int4_awq" if qformat != "int4_awq" and 64 not in allowed else "") + " for this model")


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def smoothquant_alphas(qformat: str, sq_activations: str, smoothquant_alpha: float | None,
                       alpha_search: bool) -> tuple[float, ...] | None:
    """The alphas our own SmoothQuant step tries (None: modelopt's SmoothQuant is kept as it is).

    Per-token activations need one scale per fused input group (folded into the RMSNorm in TensorRT-LLM), so
    they always take our step; per-tensor takes it only for the per-layer search."""
    if not qformats.qformat(qformat).smoothquant:
        return None
    if alpha_search and smoothquant_alpha is None:
        return smoothing.ALPHA_GRID
    if sq_activations == "per_token":
        return (smoothquant_alpha if smoothquant_alpha is not None else smoothing.DEFAULT_ALPHA,)
    return None


def quantize_options(cfg: BuildConfig) -> dict[str, Any]:
    """The ``quantize`` keywords a build's configuration sets."""
    return {"kv_cache_dtype": cfg.kv_cache_dtype, "smoothquant_alpha": cfg.smoothquant_alpha,
            "sq_activations": cfg.sq_activations, "alpha_search": cfg.sq_alpha_search, "scale_dtype": cfg.dtype}


def quantize(model: Any, qformat: str, batches: list[Any], *, kv_cache_dtype: str | None = None,
             smoothquant_alpha: float | None = None, exclude_layers: list[str] | tuple[str, ...] = (),
             sq_activations: str = "per_tensor", alpha_search: bool = False, scale_dtype: str | None = None,
             description: str = "calibrating", exclude_modules: list[str] | tuple[str, ...] = ()) -> Any:
    """Calibrate ``model`` in place on ``batches`` (token id tensors); returns the quantized model.

    int8_sq: with ``alpha_search`` (and no fixed ``smoothquant_alpha``) the SmoothQuant alpha is searched per input
    group (``llm_quant.calibration.smoothing``); ``sq_activations="per_token"`` switches the activations to dynamic per-token
    quantization (``llm_quant.calibration.per_token``). The chosen alphas are in ``model.smoothquant_report``
    (None otherwise).
    ``scale_dtype``: the exported checkpoint's dtype, which our SmoothQuant scales are rounded to.
    """
    if sq_activations not in per_token.SQ_ACTIVATIONS:
        raise QuantError(f"unknown --sq-activations {sq_activations!r}",
                         f"choose {qformats.either(per_token.SQ_ACTIVATIONS)}")
    if sq_activations != "per_tensor" and not qformats.qformat(qformat).smoothquant:
        raise QuantError(f"--sq-activations {sq_activations} applies to --qformat int8_sq only", "drop it")
    alphas = smoothquant_alphas(qformat, sq_activations, smoothquant_alpha, alpha_search)
    block = int4_block_size(model, qformat) if qformats.qformat(qformat).int4_blocks else None
    cfg = modelopt_config(qformat, kv_cache_dtype=kv_cache_dtype, smoothquant_alpha=smoothquant_alpha,
                          exclude_layers=exclude_layers, block_size=block, exclude_modules=exclude_modules)
    if cfg is None:
        return model
    check_qformat_device(qformat, model_device(model).type)
    torch = require("torch", purpose="calibration")
    mtq = require("modelopt.torch.quantization", purpose="LLM quantization")
    if not batches:
        raise QuantError("the calibration data is empty", "pass files or a dataset with text in them")
    device = model_device(model)
    capture = smoothing.Capture(model) if alphas is not None else None

    def forward_loop(m: Any) -> None:
        handles = []
        if capture is not None:  # SmoothQuant statistics ride on modelopt's calibration pass
            if not capture.groups:
                capture.find_groups(m, batches[0][:1, :16].to(device))
            handles = capture.hooks(len(batches))
        try:
            with torch.no_grad():
                for batch in track(batches, description, total=len(batches)):
                    m(batch.to(device))
        finally:
            for handle in handles:
                handle.remove()

    try:
        model = mtq.quantize(model, cfg, forward_loop)
    except (RuntimeError, NotImplementedError, AssertionError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        if "cuda" in first.lower() or "triton" in first.lower():
            raise QuantError(f"--qformat {qformat} failed on {device.type}: {first}",
                             "run it on a CUDA GPU or choose another --qformat") from exc
        raise
    report = None
    if capture is not None and alphas is not None:
        report = smoothing.smooth(model, capture, activations=sq_activations, alphas=alphas, scale_dtype=scale_dtype)
        del capture
    if qformats.qformat(qformat).smoothquant and sq_activations == "per_token":
        per_token.use_per_token_activations(model)
    model.smoothquant_report = report
    return model

"""The embedded runtime artifact (``tq-embedded-v1``): a modelopt-quantized LLM restored in PyTorch.

Layout of ``<out>/embedded/``:
- ``runtime.json``: format, base_model (full-precision HF folder, absolute or relative to this dir), qformat,
  dtype, kv_cache_dtype, exclude_modules, modelopt_version, sq_activations (int8_sq: ``per_tensor`` or
  ``per_token``; absent in older builds = per_tensor). ``per_token`` is applied on load: the fake-quant path by
  ``llm_quant.calibration.per_token``, the int8 path by ``int8_linear.convert_linears(model, activations="per_token")``.
- ``modelopt_state.pth``: a plain dict loadable with ``torch.load(weights_only=True)``:
  ``modelopt_state`` (``mto.modelopt_state``: modes, configs, quantizer properties), ``quantizer_tensors``
  (the quantizer buffers: amax, pre_quant_scale), ``folded_weights`` (weights that calibration scaled by
  1/input pre_quant_scale — SmoothQuant/AWQ fold — recomputed on load from the base weights) and
  ``weight_overrides`` (any other changed tensor, stored as is; empty for float32 bases).
- the tokenizer files (tokenizer.json, tokenizer_config.json, chat template, ...).

Restoring = base weights + modelopt state, which reproduces the in-memory quantized model exactly (logits max
|Δ| = 0, checked by tests/llm_quant/test_runtime.py); ``save_embedded`` verifies the fold recomputation bit for bit
before relying on it.
"""

from __future__ import annotations

import inspect
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_quant.calibration import per_token
from llm_quant.calibration.per_token import SQ_ACTIVATIONS
from llm_quant.calibration.smoothing import fold_pre_quant_scale
from llm_quant.runtime.cpu.int8_linear import QFORMAT_KERNELS, convert_linears
from llm_quant.runtime.cuda.decode import GraphDecoder
from llm_quant.runtime.cuda.linear import QFORMAT_CUDA_KERNELS, convert_linears_cuda
from quant_common.atomic import atomic_write_json, staged_dir, staged_file
from quant_common.errors import QuantError, require

FORMAT = "tq-embedded-v1"
STATE_FILE = "modelopt_state.pth"
RUNTIME_FILE = "runtime.json"
DTYPES = ("float32", "bfloat16", "float16")


def _torch() -> Any:
    return require("torch", purpose="the embedded PyTorch runtime")


def _is_quantizer_key(key: str) -> bool:
    return "_quantizer." in key


_fold = fold_pre_quant_scale  # modelopt's SmoothQuant/AWQ fold, recomputed on load (llm_quant.calibration.smoothing)


class _BaseWeights:
    """The base checkpoint's tensors at the runtime dtype, read one at a time on the device they are compared on
    (an 8B model's weights are then never all in host memory at once, and nothing is copied off the GPU)."""

    def __init__(self, folder: Path, dtype: str) -> None:
        safetensors = require("safetensors", purpose="reading base weights")
        self._dtype = getattr(_torch(), dtype)
        self._shards: dict[str, Any] = {}
        for shard in sorted(Path(folder).glob("*.safetensors")):
            handle = safetensors.safe_open(str(shard), framework="pt")
            self._shards.update(dict.fromkeys(handle.keys(), handle))
        # Tied embeddings are saved once; the model's state dict holds both names.
        self._alias = {"lm_head.weight": "model.embed_tokens.weight"}

    def _name(self, key: str) -> str | None:
        if key in self._shards:
            return key
        for suffix, tied in self._alias.items():
            if key.endswith(suffix) and key.replace(suffix, tied) in self._shards:
                return key.replace(suffix, tied)
        return None

    def __contains__(self, key: str) -> bool:
        return self._name(key) is not None

    def get(self, key: str, device: Any) -> Any:
        name = self._name(key)
        assert name is not None
        return self._shards[name].get_tensor(name).to(device=device, dtype=self._dtype)


_CHUNK = 1 << 22  # elements summed at a time: ~100 MiB of int64 scratch, kept well under calibration's peak
_INT_VIEW = {1: "int8", 2: "int16", 4: "int32"}


def weight_fingerprints(model: Any) -> dict[str, tuple[int, int, int]]:
    """Three int64 sums (plain, squared, position-weighted) of each state tensor's bit pattern, computed on the device
    it lives on. Taken right after loading, they let the export skip re-reading from disk the tensors calibration
    left untouched: an 8B model's 16 GB took 2.1 s to re-read and compare on the H100 box, while these sums read
    each tensor once on the GPU. A changed tensor is missed only if all three sums are unchanged."""
    torch = _torch()
    weights: dict[Any, Any] = {}
    sums: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        view = _INT_VIEW.get(value.element_size())
        if _is_quantizer_key(key) or view is None or not value.is_contiguous() or value.device.type == "meta":
            continue
        bits = value.detach().reshape(-1).view(getattr(torch, view))
        if value.device not in weights:
            weights[value.device] = torch.arange(_CHUNK, device=value.device, dtype=torch.int64) % 65521 + 1
        total = torch.zeros(3, dtype=torch.int64, device=value.device)
        for start in range(0, bits.numel(), _CHUNK):
            chunk = bits[start:start + _CHUNK].to(torch.int64)
            position = weights[value.device][:chunk.numel()]
            total += torch.stack([chunk.sum(), (chunk * chunk).sum(), (chunk * position).sum()])
        sums[key] = total
    return {key: (int(a), int(b), int(c)) for key, (a, b, c) in
            zip(sums, torch.stack([t.cpu() for t in sums.values()]).tolist(), strict=True)} if sums else {}


def _changed_tensors(model: Any, base: _BaseWeights,
                     loaded: dict[str, tuple[int, int, int]] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Split weights changed by calibration into recomputable folds and stored overrides. ``loaded``: the
    fingerprints taken when the model was loaded from ``base`` (:func:`weight_fingerprints`); tensors whose
    fingerprint is unchanged are not re-read from disk."""
    torch = _torch()
    state = model.state_dict()
    folded: list[str] = []
    overrides: dict[str, Any] = {}
    keys = [key for key in state if not _is_quantizer_key(key) and key in base]
    if loaded:
        now = weight_fingerprints(model)
        keys = [key for key in keys if key not in loaded or now.get(key) != loaded[key]]

    def change(key: str) -> str | None:
        """None (unchanged), "folded" or "override", from one read of the base tensor."""
        value, reference = state[key], base.get(key, state[key].device)
        if torch.equal(value, reference):
            return None
        pqs = state.get(f"{key.rsplit('.', 1)[0]}.input_quantizer._pre_quant_scale")
        if key.endswith(".weight") and pqs is not None and torch.equal(_fold(reference, pqs), value):
            return "folded"
        return "override"

    # reading a tensor out of the page cache and copying it to the device release the GIL: threads overlap them
    # (an 8B model's 16 GB took 2.1 s one at a time on the H100 box's 16 cores)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        changes = list(pool.map(change, keys))
    for key, kind in zip(keys, changes, strict=True):
        if kind == "folded":
            folded.append(key)
        elif kind == "override":
            overrides[key] = state[key].detach().cpu().contiguous()
    return folded, overrides


def _without_bound_methods(state: Any) -> Any:
    """nvidia-modelopt 0.37 (TensorRT-LLM 1.2's pin) records a quantizer's instance attributes, the per-token
    ``forward`` switch among them (``llm_quant.calibration.per_token``), which ``torch.load(weights_only=True)``
    then refuses; 0.47 leaves it out. It is re-applied on load from runtime.json, so it is dropped here."""
    if isinstance(state, dict):
        return {k: _without_bound_methods(v) for k, v in state.items() if not inspect.ismethod(v)}
    if isinstance(state, (list, tuple)):
        return type(state)(_without_bound_methods(v) for v in state)
    return state


def save_embedded(model: Any, tokenizer: Any, base_model_dir: Path, out_dir: Path, *, qformat: str,
                  dtype: str, kv_cache_dtype: str | None, exclude_modules: list[str],
                  sq_activations: str = "per_tensor",
                  loaded: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """Write ``out_dir`` (staged, then swapped in) for ``model`` quantized from ``base_model_dir``; ``loaded``:
    :func:`weight_fingerprints` of the model as loaded from it, before calibration (unchanged tensors are then not
    re-read)."""
    torch = _torch()
    mto = require("modelopt.torch.opt", purpose="saving the modelopt state")
    base_state = _BaseWeights(base_model_dir, dtype)
    folded, overrides = _changed_tensors(model, base_state, loaded)
    payload = {
        "format": FORMAT,
        "modelopt_state": _without_bound_methods(mto.modelopt_state(model)),
        "quantizer_tensors": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                              if _is_quantizer_key(k)},
        "folded_weights": folded,
        "weight_overrides": overrides,
    }
    base = Path(base_model_dir).resolve()
    meta = {
        "format": FORMAT,
        "base_model": str(base),
        "qformat": qformat,
        "dtype": dtype,
        "kv_cache_dtype": kv_cache_dtype,
        "exclude_modules": list(exclude_modules),
        "modelopt_version": _version("nvidia-modelopt"),
        "folded_weights": len(folded),
        "weight_overrides": len(overrides),
        "kernels": _announced_kernels(qformat, sq_activations),
        "cuda_kernels": QFORMAT_CUDA_KERNELS.get(qformat, "fake-quant"),
        "sq_activations": sq_activations,
    }
    with staged_dir(out_dir) as tmp:
        with staged_file(tmp / STATE_FILE) as state_tmp:
            torch.save(payload, state_tmp)
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / RUNTIME_FILE, meta)
        os.chmod(tmp, 0o755)
    return Path(out_dir)


def _announced_kernels(qformat: str, sq_activations: str = "per_tensor") -> str:
    """What ``load_quantized(kernels="int8")`` will run on CPU for ``qformat`` (runtime.json says so)."""
    return QFORMAT_KERNELS.get(f"{qformat}:{sq_activations}" if sq_activations == "per_token" else qformat,
                               "fake-quant")


def sq_activations_of(meta: dict[str, Any]) -> str:
    """runtime.json's activation mode; builds older than per-token SmoothQuant were per-tensor."""
    mode = meta.get("sq_activations") or "per_tensor"
    if mode not in SQ_ACTIVATIONS:
        raise QuantError(f"runtime.json has unknown sq_activations {mode!r}", "rebuild with this llm-quant")
    return str(mode)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def read_runtime_json(embedded_dir: str | Path) -> dict[str, Any]:
    path = Path(embedded_dir) / RUNTIME_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise QuantError(f"{path} does not exist", "point at the embedded/ folder written by llm-quant build") from exc
    except ValueError as exc:
        raise QuantError(f"{path} is not valid JSON ({exc})", "rebuild with llm-quant build") from exc
    if meta.get("format") != FORMAT:
        raise QuantError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}",
                         "rebuild with this version of llm-quant build")
    if meta.get("dtype") not in DTYPES:
        raise QuantError(f"{path} has unsupported dtype {meta.get('dtype')!r}", f"use one of {', '.join(DTYPES)}")
    return meta


def base_model_path(embedded_dir: str | Path, meta: dict[str, Any]) -> Path:
    base = Path(meta["base_model"])
    if not base.is_absolute():
        base = (Path(embedded_dir) / base).resolve()
    if not (base / "config.json").is_file():
        raise QuantError(f"the base model {base} named in {Path(embedded_dir) / RUNTIME_FILE} is missing",
                         "restore that folder (llm-quant build recreates the cached default) or rebuild")
    return base


def load_reference(embedded_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """The full-precision model and tokenizer the quantized model was made from."""
    meta = read_runtime_json(embedded_dir)
    return _load_base(embedded_dir, meta, device), _load_tokenizer(embedded_dir)


def _load_base(embedded_dir: str | Path, meta: dict[str, Any], device: str) -> Any:
    torch = _torch()
    transformers = require("transformers", purpose="loading the base model")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(base_model_path(embedded_dir, meta)), dtype=getattr(torch, meta["dtype"]))
    return model.to(device).eval()


def _load_tokenizer(embedded_dir: str | Path) -> Any:
    transformers = require("transformers", purpose="loading the tokenizer")
    return transformers.AutoTokenizer.from_pretrained(str(embedded_dir))


def _own_memory(model: Any) -> None:
    """Copy the parameters still backed by the base checkpoint's mmap (embeddings, norms) into memory of their
    own, so the mapping, with the pages the replaced FP32 weights were read from, is released. Tied parameters
    are one object, so they stay tied."""
    torch = _torch()
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def load_quantized(embedded_dir: str | Path, device: str = "cpu", kernels: str = "int8",
                   decode_max_len: int | None = None) -> tuple[Any, Any]:
    """The quantized model (PyTorch) and its tokenizer, restored from ``embedded_dir``.

    ``kernels="int8"`` (or its name ``"real"``) swaps the quantized linears for real low-precision kernels: integer
    kernels on the CPU (``llm_quant.runtime.cpu.int8_linear``), FP8 / INT8 / INT4 kernels on CUDA
    (``llm_quant.runtime.cuda.linear``), and on CUDA the model gets ``graph_decoder``
    (``llm_quant.runtime.cuda.decode``: static KV cache, graph-captured greedy steps, ``decode_max_len``
    positions, default min(config, 2048)). The model's ``kernel_report`` says which linear runs what.
    ``kernels="fake"`` keeps modelopt's fake quantization, the numerical reference."""
    torch = _torch()
    if kernels not in ("int8", "real", "fake"):
        raise QuantError(f"unknown kernels {kernels!r}", "use kernels='real' (or 'int8') or kernels='fake'")
    mto = require("modelopt.torch.opt", purpose="restoring the quantized model")
    require("modelopt.torch.quantization", purpose="restoring the quantized model")
    meta = read_runtime_json(embedded_dir)
    state_path = Path(embedded_dir) / STATE_FILE
    try:
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise QuantError(f"{state_path} does not exist", "rebuild with llm-quant build") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one line, no traceback
        raise QuantError(f"{state_path} cannot be loaded ({exc.__class__.__name__})", "rebuild it") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise QuantError(f"{state_path} is not a {FORMAT} state", "rebuild with llm-quant build")
    model = _load_base(embedded_dir, meta, "cpu")
    model = mto.restore_from_modelopt_state(model, payload["modelopt_state"])
    try:
        missing = model.load_state_dict(payload["quantizer_tensors"], strict=False)
    except RuntimeError as exc:  # shape mismatch: torch's message is many lines; keep the last
        raise QuantError(f"{state_path} does not fit the base model ({str(exc).strip().splitlines()[-1].strip()})",
                         "the base model changed since the build; rebuild") from exc
    if missing.unexpected_keys:
        raise QuantError(f"{state_path} holds tensors the model lacks: {missing.unexpected_keys[:3]}",
                         "the base model changed since the build; rebuild")
    state = model.state_dict()
    folded = set(payload["folded_weights"])

    def fold(name: str, module: Any) -> None:
        key = f"{name}.weight"
        if key in folded:
            folded.discard(key)
            # a new tensor, not copy_: the base weights are a private mmap of the safetensors file, and writing
            # into it turns its pages into anonymous memory that outlives the weight
            module.weight.data = _fold(state[key], state[f"{name}.input_quantizer._pre_quant_scale"])

    mode = sq_activations_of(meta)
    with torch.no_grad():
        for key, value in payload["weight_overrides"].items():
            state[key].copy_(value)
        if kernels != "fake" and device == "cpu":  # --- int8 kernels (issue 10): fold one layer, convert it ---
            model.kernel_report = convert_linears(model, activations=mode, prepare=fold)
        for key in sorted(folded):  # the rest (all of them for kernels="fake")
            fold(key.rsplit(".", 1)[0], model.get_submodule(key.rsplit(".", 1)[0]))
    state.clear()  # its tensors would keep every replaced FP32 weight alive
    _own_memory(model)
    # --- end int8 kernels ---
    if mode == "per_token":  # linears left on the fake-quant path quantize their activations per token
        per_token.use_per_token_activations(model)
    model = model.to(device).eval()
    if kernels != "fake" and device != "cpu" and str(device).startswith("cuda"):
        model.kernel_report = convert_linears_cuda(model, activations=mode)
        limit = decode_max_len or min(int(getattr(model.config, "max_position_embeddings", 2048)), 2048)
        model.graph_decoder = GraphDecoder(model, max_len=limit)
    return model, _load_tokenizer(embedded_dir)

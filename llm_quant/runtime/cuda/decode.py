"""Greedy decoding on CUDA without launch overhead: a static KV cache and one CUDA graph per batch size (and per
cache-length bucket, where those are on).

HF ``generate`` runs every decode step eagerly: hundreds of kernel launches per token, so a 1B model decodes at
~17 tok/s on an H100 whatever its kernels (FACTS §7). :class:`GraphDecoder` prefills into a
``transformers.StaticCache`` (:meth:`GraphDecoder.prefill`) and captures one decode step (embedding -> logits ->
argmax) per batch size with ``torch.cuda.graph``; each further token is one graph replay. With ``fuse=True`` the
RMSNorms, act(gate) x up and rotary embedding run ``torch.compile``'d while a step is captured
(:mod:`llm_quant.runtime.cuda.fused`), so the graph holds one fused kernel where eager code launches several;
prefill runs them compiled too; any compile failure falls back to eager steps (``fuse_error`` says why).
With ``length_buckets=True`` a step reads only the first 128, 256, ... positions of the static cache (one graph per
bucket, switched as the sequence grows) instead of all ``max_len`` (2048 in serve) of every layer at every token.
Both are on by default since the H100 check of 2026-12-07: greedy tokens equal to eager generate's (64/64 fused,
48/48 across a bucket) and, at serve's max_len 2048, the 8B shape decoding one row at 152 tok/s in FP8 and 130 in
bf16 with both, against 106 and 93 without (benchmarks/results/llm_runtime_gpu.md).

The step takes a prepared 4-D additive mask, so HF's mask construction (which inspects values on the host) is never
traced, and prompts of different lengths are left-padded (padding masked out, positions counted from each row's
first real token).

    decoder = GraphDecoder(model, max_len=2048)
    tokens = decoder.generate(input_ids, max_new_tokens=64)   # [B, prompt + new] on the GPU
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_quant.runtime.cuda.fused import fused_elementwise
from quant_common.errors import QuantError, require


def _torch() -> Any:
    return require("torch", purpose="graph-captured decoding")


def _rewind(cache: Any) -> None:
    """Start the cache over. transformers 5 StaticCache layers write where their own ``cumulative_length`` (a
    device tensor, advanced in place by each update, inside the graph too) points, not at ``cache_position``; the
    positions we pass are then the same numbers, and older layers that read ``cache_position`` need nothing."""
    torch = _torch()
    for layer in getattr(cache, "layers", []):
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            length.zero_()
        elif length is not None:
            layer.cumulative_length = 0


def _lengths(cache: Any) -> list[Any]:
    """Each layer's write position (see :func:`_rewind`), to undo a warm-up that failed part way."""
    torch = _torch()
    lengths = [getattr(layer, "cumulative_length", None) for layer in getattr(cache, "layers", [])]
    return [length.clone() if isinstance(length, torch.Tensor) else length for length in lengths]


def _set_lengths(cache: Any, lengths: list[Any]) -> None:
    torch = _torch()
    for layer, length in zip(getattr(cache, "layers", []), lengths, strict=False):
        if isinstance(length, torch.Tensor):
            layer.cumulative_length.copy_(length)
        elif length is not None:
            layer.cumulative_length = length


def _cache_argument(model: Any) -> str:
    """What the model's forward calls its KV cache: ``cache`` from transformers 5.2x on (``past_key_values``
    warns there and goes in 5.40), ``past_key_values`` before."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: the older name, which every version takes
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


@contextlib.contextmanager
def _visible(cache: Any, length: int | None) -> Any:
    """Within the block, attention reads the first ``length`` cache positions (all for None): the cache's update
    still writes into the whole static cache, the keys and values it returns are views of their first ``length``
    positions, so a captured step reads only those."""
    if length is None:
        yield
        return
    update = cache.update

    def first(*args: Any, **kwargs: Any) -> Any:
        keys, values = update(*args, **kwargs)
        return keys[:, :, :length], values[:, :, :length]

    cache.update = first
    try:
        yield
    finally:
        cache.__dict__.pop("update", None)


@dataclass
class _Graph:
    batch: int
    cache: Any
    graphs: dict[int, Any]  # visible cache length -> the captured step
    ids: Any  # [B, 1] the token fed to the next step
    position: Any  # [1] its cache position
    pad: Any  # [B] left padding per row
    next_token: Any  # [B] argmax written by the step


@dataclass
class GraphDecoder:
    """Greedy decode of ``model`` (a HF causal LM on CUDA) with captured decode steps; ``capture_seconds`` keeps
    what each batch size's warm-up, compilation and capture cost, ``fused`` what the captured step runs compiled
    (``fuse=True``), ``fuse_error`` why compiling failed where it did (the step is then captured eager)."""

    model: Any
    max_len: int = 2048
    fuse: bool = True
    length_buckets: bool = True
    graphs: dict[int, _Graph] = field(default_factory=dict)
    capture_seconds: dict[str, float] = field(default_factory=dict)
    fused: list[str] = field(default_factory=list)
    fuse_error: str | None = None
    _cache_keyword: str = field(init=False, repr=False, default="past_key_values")

    def __post_init__(self) -> None:
        self._cache_keyword = _cache_argument(self.model)  # once: every prefill and capture passes the cache

    def _visible_length(self, visible: int) -> int | None:
        """How many cache positions a step whose keys end at ``visible`` reads: with ``length_buckets``, the next
        power of two from 128 (a graph each), so a short conversation does not read all ``max_len`` positions of
        every layer's cache at every token; else all of them (None)."""
        if not self.length_buckets:
            return None
        length = 128
        while length < visible:
            length *= 2
        return None if length >= self.max_len else length

    def _mask(self, position: Any, pad: Any, rows: int, length: int | None = None) -> Any:
        """[B, 1, rows, length or max_len], additive in the model's dtype (0 where query i, at cache position
        position + i, sees a key: from its row's first real token up to itself; the dtype's lowest value elsewhere).
        Additive, not boolean: SDPA turns a boolean mask into this in every call, a kernel per layer and token, and
        eager attention adds the mask to its scores."""
        torch = _torch()
        keys = torch.arange(length or self.max_len, device=position.device)
        queries = position.reshape(1, -1)[:, :1] + torch.arange(rows, device=position.device).reshape(-1, 1)
        causal = keys.reshape(1, -1) <= queries  # [rows, max_len]
        real = keys.reshape(1, -1) >= pad.reshape(-1, 1)  # [B, max_len]
        # a padding query sees itself: a row with no key at all would give NaN, and 0 x NaN poisons real rows
        own = keys.reshape(1, -1) == queries
        sees = (causal.unsqueeze(0) & (real.unsqueeze(1) | own.unsqueeze(0))).unsqueeze(1)
        dtype = self.model.dtype
        return torch.zeros((), dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)

    def _forward(self, ids: Any, position: Any, pad: Any, cache: Any, length: int | None = None) -> Any:
        torch = _torch()
        rows = ids.shape[1]
        cache_position = position.reshape(-1)[:1] + torch.arange(rows, device=ids.device)
        position_ids = (cache_position.reshape(1, -1) - pad.reshape(-1, 1)).clamp_min(0)
        with _visible(cache, length):
            out = self.model(input_ids=ids, position_ids=position_ids, cache_position=cache_position,
                             attention_mask=self._mask(position, pad, rows, length), use_cache=True,
                             logits_to_keep=1, **{self._cache_keyword: cache})
        return out.logits[:, -1]

    def _new_graph(self, batch: int, device: Any) -> _Graph:
        torch = _torch()
        transformers = require("transformers", purpose="the static KV cache")
        cache = transformers.StaticCache(config=self.model.config, max_cache_len=self.max_len)
        zeros = torch.zeros(batch, 1, dtype=torch.long, device=device)
        return _Graph(batch, cache, {}, zeros, torch.zeros(1, dtype=torch.long, device=device),
                      torch.zeros(batch, dtype=torch.long, device=device),
                      torch.zeros(batch, dtype=torch.long, device=device))

    def _step(self, state: _Graph, visible: int) -> None:
        """One decode step (keys up to position ``visible`` - 1): a replay, or a capture whose warm-up runs it."""
        length = self._visible_length(visible)
        graph = state.graphs.get(length or self.max_len)
        if graph is None:
            self._capture(state, length)
        else:
            graph.replay()

    def _capture(self, state: _Graph, length: int | None) -> None:
        torch = _torch()
        start = time.perf_counter()

        def step() -> None:
            logits = self._forward(state.ids, state.position, state.pad, state.cache, length)
            state.next_token.copy_(logits.argmax(-1))

        def warm_up() -> None:  # off the capture (compilation, autotuning, cuBLAS handles); same inputs
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)

        with contextlib.ExitStack() as fusion:
            if self.fuse:
                self.fused = fusion.enter_context(fused_elementwise(self.model))
            lengths = _lengths(state.cache)
            try:
                warm_up()
            except Exception as exc:  # noqa: BLE001 - a compiler failure must not stop decoding: capture it eager
                if not self.fuse:
                    raise
                fusion.close()
                self._fusion_failed(exc, state.cache, lengths)
                warm_up()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        state.graphs[length or self.max_len] = graph
        self.capture_seconds[f"b{state.batch}/{length or self.max_len}"] = round(time.perf_counter() - start, 3)

    def _fusion_failed(self, exc: Exception, cache: Any, lengths: list[Any]) -> None:
        """Compiling failed: note why, run eager from now on, and undo what the failed run wrote to the cache."""
        _torch().cuda.synchronize()
        self.fuse, self.fused = False, []
        self.fuse_error = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        _set_lengths(cache, lengths)

    def _prefill(self, input_ids: Any, pad: Any, cache: Any) -> Any:
        """The prompt's last logits [B, V], its keys and values written to ``cache`` from position 0; with ``fuse``
        the elementwise work runs compiled here too (Inductor compiles the prompt length dynamic from the second
        length on, so each new length does not recompile)."""
        torch = _torch()
        start = torch.zeros(1, dtype=torch.long, device=input_ids.device)
        if self.fuse:
            lengths = _lengths(cache)
            try:
                with fused_elementwise(self.model) as fused:
                    logits = self._forward(input_ids, start, pad, cache)
                self.fused = fused
                return logits
            except Exception as exc:  # noqa: BLE001 - as in _capture: a compiler failure falls back to eager
                self._fusion_failed(exc, cache, lengths)
        return self._forward(input_ids, start, pad, cache)

    def _prefilled(self, input_ids: Any, pad_lengths: Any) -> tuple[_Graph, Any, Any]:
        """(batch size B's state, the padding [B], the prompt's last logits [B, V]) with that state's cache rewound
        and the prompt written into it. Under ``inference_mode``: the cache's tensors are inference tensors."""
        torch = _torch()
        batch = input_ids.shape[0]
        pad = torch.zeros(batch, dtype=torch.long, device=input_ids.device) if pad_lengths is None else \
            pad_lengths.to(device=input_ids.device, dtype=torch.long)
        state = self.graphs.get(batch) or self._new_graph(batch, input_ids.device)
        self.graphs[batch] = state
        _rewind(state.cache)
        return state, pad, self._prefill(input_ids, pad, state.cache)

    def prefill(self, input_ids: Any, *, pad_lengths: Any = None) -> Any:
        """The last position's logits [B, V] of ``input_ids`` [B, P], as :meth:`generate` computes them before
        its first token (into the static cache of batch size B, which the next ``generate`` rewinds)."""
        with _torch().inference_mode():
            return self._prefilled(input_ids, pad_lengths)[2]

    def generate(self, input_ids: Any, max_new_tokens: int, *, pad_lengths: Any = None,
                 eos_token_id: int | None = None, on_step: Callable[[Any], bool] | None = None) -> Any:
        """Greedy continuation of ``input_ids`` [B, P] (left-padded where ``pad_lengths`` [B] says so): returns
        [B, P + n] with n <= ``max_new_tokens`` (fewer when every row has produced ``eos_token_id``, or when
        ``on_step(tokens [B])``, called with each step's tokens, returns True).

        Batches are run at the next power of two (extra rows repeat the last one), so a server that batches
        1..8 requests captures four graphs, not eight."""
        torch = _torch()
        rows = input_ids.shape[0]
        bucket = 1 << (rows - 1).bit_length()
        if bucket != rows:
            fill = bucket - rows
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(fill, -1)])
            if pad_lengths is not None:
                pad_lengths = torch.cat([pad_lengths, pad_lengths[-1:].expand(fill)])
        return self._generate(input_ids, max_new_tokens, pad_lengths, eos_token_id, on_step, rows)[:rows]

    def _generate(self, input_ids: Any, max_new_tokens: int, pad_lengths: Any, eos_token_id: int | None,
                  on_step: Callable[[Any], bool] | None, rows: int) -> Any:
        torch = _torch()
        batch, prompt = input_ids.shape
        if prompt + max_new_tokens > self.max_len:
            raise QuantError(f"prompt ({prompt}) + new tokens ({max_new_tokens}) exceed the decoder's "
                             f"{self.max_len} positions", "ask for fewer tokens or build a decoder with a larger max_len")
        with torch.inference_mode():
            state, pad, logits = self._prefilled(input_ids, pad_lengths)
            first = logits.argmax(-1)
            state.pad.copy_(pad)
            state.ids.copy_(first.reshape(batch, 1))
            state.position.fill_(prompt)
            out = [first]
            finished = first[:rows] == eos_token_id if eos_token_id is not None else None
            stop = on_step is not None and bool(on_step(first[:rows]))
            if max_new_tokens > 1 and not stop and not (finished is not None and bool(finished.all())):
                self._step(state, prompt + 1)
            while len(out) < max_new_tokens and not stop and not (finished is not None and bool(finished.all())):
                token = state.next_token.clone()
                out.append(token)
                if on_step is not None and on_step(token[:rows]):
                    break
                if finished is not None:
                    finished |= token[:rows] == eos_token_id
                    if bool(finished.all()):
                        break
                if len(out) < max_new_tokens:
                    state.ids.copy_(token.reshape(batch, 1))
                    state.position.add_(1)
                    self._step(state, prompt + len(out))
            return torch.cat([input_ids, torch.stack(out, dim=1)], dim=1)

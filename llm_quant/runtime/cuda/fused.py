"""Fewer kernels in a captured decode step: the elementwise work between the GEMMs compiled into fused kernels.

A decode step of an eager HF Llama-family layer launches some thirty small kernels besides its GEMMs: RMSNorm is
seven (cast, square, mean, add, rsqrt, multiply, weight), rotary embedding about ten, SiLU x up two. Captured in a
CUDA graph each still costs a few microseconds of GPU time, which for an 8B model at batch 1 was as much as the
quantized GEMMs themselves (the profile in ``benchmarks/llm_runtime_gpu.py --profile``).

:func:`fused_elementwise` swaps those three pieces for ``torch.compile``'d versions (Inductor: one Triton kernel
each) while a decode step is warmed up and captured, or a prompt is prefilled, and puts the eager ones back
afterwards: the graph keeps the fused kernels. Prefill, whose length changes with every prompt, recompiles once,
for a dynamic length, at the second length it sees (Inductor's automatic dynamic shapes). What is
fused is found by structure, not by model name: leaf modules whose class name ends in ``RMSNorm``; MLPs with
``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn``; the modeling module's ``apply_rotary_pos_emb``.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from quant_common.errors import require


def _act_mul(act: Any, gate: Any, up: Any) -> Any:
    return act(gate) * up


# one compiled wrapper per function, kept for the process: the captured graphs launch the kernels these own, and a
# later capture (another batch size) finds the earlier compilations through them
_COMPILED: dict[Any, Any] = {}


def _compiled(fn: Any) -> Any:
    torch = require("torch", purpose="fused decode kernels")
    if fn not in _COMPILED:
        if not os.path.basename(sys.executable or "").startswith("python"):
            # embedded Python (Triton's python-backend stub): Inductor's compile workers re-run sys.executable
            inductor: Any = require("torch._inductor.config", purpose="fused decode kernels")
            inductor.compile_threads = 1
        # dynamic=None: the first batch size is compiled as it is, a second makes the batch dimension dynamic
        _COMPILED[fn] = torch.compile(fn)
    return _COMPILED[fn]


def _mlp_forward(self: Any, x: Any) -> Any:
    """A gated MLP's forward with activation x up fused (the GEMMs stay the modules' own)."""
    return self.down_proj(_compiled(_act_mul)(self.act_fn, self.gate_proj(x), self.up_proj(x)))


@contextmanager
def fused_elementwise(model: Any) -> Iterator[list[str]]:
    """Within the block, ``model``'s RMSNorms, gated MLPs' activation x up and rotary embedding run compiled; yields
    the names of what was swapped (empty for a model with none of them)."""
    undo: list[Any] = []
    fused: list[str] = []
    with ExitStack() as stack:
        stack.callback(lambda: [restore() for restore in reversed(undo)])  # also when swapping fails part way
        attention_modules: set[str] = set()

        def swap(module: Any, forward: Any, label: str) -> None:
            module.forward = types.MethodType(forward, module)
            undo.append(lambda: module.__dict__.pop("forward", None))
            if label not in fused:
                fused.append(label)

        for module in model.modules():
            cls = type(module)
            if cls.__name__.endswith("RMSNorm") and not any(True for _ in module.children()):
                swap(module, _compiled(cls.forward), cls.__name__)
            elif all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                swap(module, _mlp_forward, "act(gate) * up")
            elif hasattr(module, "q_proj") and hasattr(module, "k_proj"):
                # modelopt's quantized attention is a subclass made elsewhere: the modeling module is its base's
                attention_modules.update(c.__module__ for c in cls.__mro__
                                         if hasattr(sys.modules.get(c.__module__), "apply_rotary_pos_emb"))
        for name in sorted(attention_modules):
            modeling = sys.modules.get(name)
            original = getattr(modeling, "apply_rotary_pos_emb", None)
            if modeling is None or original is None:
                continue
            modeling.apply_rotary_pos_emb = _compiled(original)  # type: ignore[attr-defined]
            undo.append(lambda m=modeling, f=original: setattr(m, "apply_rotary_pos_emb", f))
            fused.append(f"{name.rsplit('.', 1)[-1]}.apply_rotary_pos_emb")
        if fused:
            # Inductor keeps a fused chain in fp32 where eager rounds each bf16 result: round as eager does, so a
            # captured step decodes as the eager model (the graph decoder's test compares their greedy tokens)
            inductor: Any = require("torch._inductor.config", purpose="fused decode kernels")
            if hasattr(inductor, "emulate_precision_casts"):
                stack.enter_context(inductor.patch(emulate_precision_casts=True))
        yield fused

"""The embedded runtime: a modelopt-quantized LLM restored in PyTorch (``embedded``: the ``tq-embedded-v1`` format,
save and load) running its quantized linears on real low-precision kernels (``cpu/``, ``cuda/``).

``llm_quant.runtime:load_quantized`` is the loader Triton repositories name (``runtime_loader``), so this package
exports it.
"""

from llm_quant.runtime.embedded import load_quantized

__all__ = ["load_quantized"]

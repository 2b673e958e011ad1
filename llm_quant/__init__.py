"""llm_quant: HF Llama-family checkpoint -> modelopt calibration -> TensorRT-LLM checkpoint, engine, Triton repository.

Stages, lowest first; each imports only its own stage or those listed before it (plus ``quant_common`` and
``triton_backend``; ``tests/test_import_graph.py`` checks it):

- ``upstream/``: TensorRT-LLM and modelopt facts as cited tables (trtllm-build flags, QuantAlgo names, the
  SmoothQuant plugin layout) and the algorithms an export must declare; the qformat table itself is
  ``quant_common.qformats``;
- ``config``: the typed build configuration;
- ``model/``: presets (configs/llm/*.yaml), ``--model`` resolution, the packaged GGUF default, the GPU preflight,
  random Llamas;
  ``data/``: calibration / search / eval documents and the bundled corpus;
- ``calibration/``: modelopt calibration, SmoothQuant scales per input group, per-token activations, exclusions;
- ``export/``: TensorRT-LLM and HF checkpoints, the per-token SmoothQuant plugin layout, checkpoint verification,
  the trtllm-build step;
- ``runtime/``: the embedded PyTorch artifact (``embedded``; ``llm_quant.runtime.load_quantized``) and its CPU int8
  kernels (``cpu/``) and CUDA kernels and graph-captured decoding (``cuda/``);
- ``evaluation/``: perplexity and the accuracy-budget layer search;
- ``tiny``: a tiny quantized build for tests, benchmarks and demos (``python -m llm_quant.tiny OUT``);
- ``pipeline`` (``build``/``evaluate``), then ``cli/`` (``llm-quant``).
"""

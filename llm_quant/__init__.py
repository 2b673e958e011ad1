"""llm_quant: HF Llama-family checkpoint -> modelopt calibration -> TensorRT-LLM checkpoint, engine, Triton repository.

Modules, each importing only the ones listed before it (plus ``quant_common`` and ``triton_backend``):

- ``formats``: the one table of ``--qformat`` / ``--kv-cache-dtype`` rows;
- ``config`` (typed build configuration), ``presets`` (configs/llm/*.yaml);
- inputs: ``models`` (resolve --model to a HF folder), ``data`` (calibration / search / eval text);
- calibration: ``evaluate`` (perplexity), ``calibrate`` (modelopt), ``sensitivity`` (accuracy-budget layer search);
- artifacts: ``checkpoint`` (TensorRT-LLM checkpoint checks), ``export``, ``runtime`` (embedded PyTorch artifact),
  ``engine`` (trtllm-build);
- ``pipeline`` (``build``/``evaluate``), then ``cli_build`` and ``cli`` (``llm-quant``);
- ``tiny``: a tiny random Llama for tests, benchmarks and demos.
"""

"""The model to quantize: family presets (``presets``), ``--model`` resolution (``resolve``), the packaged GGUF
default converted to a HF folder (``gguf``), whether the visible GPU runs the format and holds the model, and the
checkpoint dtype (``preflight``), and random Llamas for tests and benchmarks (``tiny``)."""

"""The model to quantize: family presets (``presets``), ``--model`` resolution (``resolve``), the packaged GGUF
default converted to a HF folder (``gguf``), and a tiny random Llama for tests (``tiny``)."""

"""Artifacts for NVIDIA's stack: the TensorRT-LLM and HF checkpoints (``checkpoints``), the per-token SmoothQuant
plugin layout (``sq_checkpoint``), checkpoint conformance (``verify``) and the ``trtllm-build`` step (``engine``)."""

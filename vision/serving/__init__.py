"""Serve a `vision-quant build` with Triton: model repository (``repository``), configs (``configs``), client."""

"""The embedded runtime's CUDA kernels: FP8 / INT8 / INT4 linears (``linear``), the GPU kernels they need
beyond PyTorch's own (``kernels``), and graph-captured greedy decoding (``decode``)."""

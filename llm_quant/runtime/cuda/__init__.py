"""The embedded runtime's CUDA kernels: FP8 / INT8 / INT4 linears (``cuda_linear``), the GPU kernels they need
beyond PyTorch's own (``cuda_kernels``), and graph-captured greedy decoding (``cuda_decode``)."""

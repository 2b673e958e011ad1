"""The embedded runtime's CPU kernels: int8 linears (``int8_linear``), their W8A8 GEMM and fused q/k/v and gate/up
GEMMs (``int8_fused``), and the compiled activation quantizers (``int8_kernels``)."""

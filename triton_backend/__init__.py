"""triton_backend."""

"""Runtimes behind one ``Runner`` interface (Polygraphy's backend/ layout): ONNX Runtime, TensorRT."""

"""Artifacts made from the scales: the TensorRT calibration cache, the two Q/DQ ONNX layouts, trtexec lines."""

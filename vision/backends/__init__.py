"""Runtimes behind one ``Runner`` contract (Polygraphy's backend/ layout): ``base`` (the contract), ``onnxrt``
(ONNX Runtime), ``openvino`` (OpenVINO), ``trt`` (TensorRT), ``engine`` (the engine step of a build) and ``select`` (which runtime runs an
artifact, and which one a build targets: its cache header version and whether it builds an engine)."""

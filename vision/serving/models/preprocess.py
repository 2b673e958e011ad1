"""Triton python-backend model ``preprocess``: encoded image bytes -> letterboxed NCHW float32 + letterbox record.

Written by ``vision-quant package``. It runs the same code as ``vision-quant predict``
(``vision.data.images.decode_image`` / ``letterbox`` / ``to_input_tensor``), so the tensorrt-quantization package
must be importable by the server's Python (the bundled server puts it on PYTHONPATH; in NVIDIA's container,
``pip install tensorrt-quantization``).

Inputs: ``image`` BYTES [1]. Outputs: ``images`` FP32 [3, H, W]; ``letterbox`` FP32 [5] = ratio, pad_x, pad_y,
original height, original width. A request that cannot be decoded gets an error response; the others are served.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from vision.data.images import decode_image, letterbox, to_input_tensor
from vision.serving.triton_model import model_parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        height, width = (int(v) for v in params["input_hw"].split(","))
        self.input_hw = (height, width)
        self.max_pixels = int(params.get("max_image_pixels", "0")) or None

    def _one(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
        if encoded.dtype != np.object_:
            raise ValueError(f"input 'image' must be BYTES, got {encoded.dtype}")
        items = encoded.reshape(-1)
        if items.size == 0:
            raise ValueError("input 'image' holds no image")
        tensors, records = [], []
        for item in items:
            data = item if isinstance(item, bytes) else bytes(item)
            boxed, info = letterbox(decode_image(data, self.max_pixels), self.input_hw)
            tensors.append(boxed)
            records.append([info.ratio, info.pad_x, info.pad_y, *info.original_hw])
        batch = to_input_tensor(tensors)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("images", batch),
            pb_utils.Tensor("letterbox", np.asarray(records, dtype=np.float32))])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils)

"""Triton python-backend model ``detector``: the build's ONNX model run by our own ``Runner`` (CPU server default).

Written by ``vision-quant package``. ``vision.backends.select.load_runner`` picks the runtime (ONNX Runtime, or
``runner_backend`` where set), the same as ``vision-quant predict`` / ``eval``, so the package must be importable
by the server's Python. Dynamic batching hands several requests at once: they are stacked into one batch (split
into the model's fixed batch where its batch dimension is fixed) and the outputs are cut back per request.
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from vision.backends.select import load_runner
from vision.serving.triton_model import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        threads = int(params.get("threads", "0")) or None
        self.runner = load_runner(os.path.join(version_dir, params["model_file"]), params.get("runner_backend", "auto"),
                                  threads)
        self.runner.activate()
        spec = self.runner.input_specs()[0]
        self.input_name = spec.name
        batch = spec.shape[0] if spec.shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.output_names = [s.name for s in self.runner.output_specs()]

    def _run(self, batch):
        if self.fixed_batch is None:
            return self.runner.infer({self.input_name: batch})
        pieces = []
        for start in range(0, batch.shape[0], self.fixed_batch):
            chunk = batch[start:start + self.fixed_batch]
            short = self.fixed_batch - chunk.shape[0]
            if short:  # pad the last chunk to the model's batch; the padding rows are dropped below
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
            out = self.runner.infer({self.input_name: chunk})
            pieces.append({k: v[:self.fixed_batch - short] for k, v in out.items()})
        return {name: np.concatenate([p[name] for p in pieces]) for name in self.output_names}

    def execute(self, requests):
        arrays, sizes = [], []
        for request in requests:
            array = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            arrays.append(array.astype(np.float32, copy=False))
            sizes.append(array.shape[0])
        try:
            outputs = self._run(np.concatenate(arrays))
        except Exception as exc:  # noqa: BLE001 - answer every request with the error, keep serving
            error = pb_utils.TritonError(f"detector failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][start:start + size]))
                       for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.runner.deactivate()

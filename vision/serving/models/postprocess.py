"""Triton python-backend model ``postprocess``: YOLOv8 head output -> boxes in the original image's pixels.

Written by ``vision-quant package``. Decode, confidence threshold, class-aware NMS and un-letterboxing are
``vision.evaluation.yolo.postprocess``, the code ``vision-quant predict`` and ``eval`` run (the package must be
importable by the server's Python).

Inputs: the detector output (``output0`` [C, N]), ``letterbox`` FP32 [5], optional ``conf_threshold``,
``iou_threshold`` (FP32 [1]), ``max_det`` (INT32 [1]), ``multi_label`` (BOOL [1]; true for mAP evaluation).
Outputs, padded to the most detections in the request's batch: ``boxes`` FP32 [N, 4] xyxy, ``scores`` FP32 [N],
``classes`` INT32 [N], ``names`` BYTES [N] (from the build's metadata; the class index where it has none),
``num_detections`` INT32 [1].
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from vision.data.images import LetterboxInfo
from vision.evaluation.yolo import postprocess
from vision.serving.triton_model import model_parameters, respond_each


def _scalar(request, name, default, cast):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return cast(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.output_name = params["detector_output"]
        self.names = json.loads(params.get("class_names", "[]"))
        self.conf = float(params.get("conf_threshold", "0.25"))
        self.iou = float(params.get("iou_threshold", "0.7"))
        self.max_det = int(params.get("max_det", "300"))

    def _label(self, cls):
        return self.names[cls] if 0 <= cls < len(self.names) else str(cls)

    def _one(self, request):
        output = pb_utils.get_input_tensor_by_name(request, self.output_name).as_numpy()
        records = pb_utils.get_input_tensor_by_name(request, "letterbox").as_numpy().reshape(-1, 5)
        letterboxes = [LetterboxInfo(ratio=float(r[0]), pad_x=float(r[1]), pad_y=float(r[2]),
                                     original_hw=(int(r[3]), int(r[4]))) for r in records]
        conf = _scalar(request, "conf_threshold", self.conf, float)
        iou = _scalar(request, "iou_threshold", self.iou, float)
        max_det = _scalar(request, "max_det", self.max_det, int)
        multi_label = _scalar(request, "multi_label", False, bool)
        detections = postprocess(output, letterboxes, conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)
        batch, most = len(detections), max([len(d) for d in detections] + [0])
        boxes = np.zeros((batch, most, 4), np.float32)
        scores = np.zeros((batch, most), np.float32)
        classes = np.full((batch, most), -1, np.int32)
        names = np.full((batch, most), b"", dtype=object)
        counts = np.zeros((batch, 1), np.int32)
        for i, found in enumerate(detections):
            n = len(found)
            counts[i, 0] = n
            boxes[i, :n] = found.boxes
            scores[i, :n] = found.scores
            classes[i, :n] = found.classes
            names[i, :n] = [self._label(int(c)).encode("utf-8") for c in found.classes]
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("boxes", boxes), pb_utils.Tensor("scores", scores),
            pb_utils.Tensor("classes", classes), pb_utils.Tensor("names", names),
            pb_utils.Tensor("num_detections", counts)])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils)

"""Client for the served detector (``yolov8`` ensemble of ``vision-quant package``), HTTP or gRPC (tritonclient).

    client = DetectClient("127.0.0.1:8000")
    detections = client.detect(Path("bus.jpg").read_bytes())     # vision.evaluation.yolo.Detections

Images travel encoded (JPEG/PNG bytes); letterbox, decode and NMS run in the server. Every failure is a
``QuantError`` with one line: unreachable server, unknown model, a request the server refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from quant_common.atomic import ensure_output_dir
from quant_common.errors import QuantError, require
from vision.data.images import load_image
from vision.evaluation.predict import detection_record, save_drawn
from vision.evaluation.yolo import Detections
from vision.serving.repository import ENSEMBLE

Protocol = Literal["http", "grpc"]
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
RESULTS = ("boxes", "scores", "classes", "names", "num_detections")


class DetectClient:
    """One connection to a served detector; thread-unsafe like tritonclient's own clients (one per thread)."""

    def __init__(self, url: str | None = None, *, protocol: Protocol = "http", model: str = ENSEMBLE,
                 timeout_s: float = 60.0) -> None:
        if protocol not in ("http", "grpc"):
            raise QuantError(f"unknown protocol {protocol!r}", "use --protocol http or --protocol grpc")
        self.url = (url or f"127.0.0.1:{DEFAULT_PORTS[protocol]}").removeprefix("http://").rstrip("/")
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        module = require(f"tritonclient.{protocol}", purpose="talking to Triton",
                         install=f"pip install 'tritonclient[{protocol}]'")
        self._module = module
        self._utils = require("tritonclient.utils", purpose="talking to Triton", install="pip install tritonclient")
        try:
            self._client = (module.InferenceServerClient(self.url, network_timeout=timeout_s,
                                                         connection_timeout=timeout_s)
                            if protocol == "http" else module.InferenceServerClient(self.url))
        except Exception as exc:  # noqa: BLE001 - tritonclient raises several types for a bad URL
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> QuantError:
        return QuantError(f"cannot reach Triton at {self.protocol}://{self.url} ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})",
                          "start it with `vision-quant serve REPO` or pass the right --url/--protocol")

    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self._module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def infer_raw(self, inputs: list[Any]) -> dict[str, np.ndarray]:
        """Send prepared ``InferInput``s to the model; the outputs by name."""
        outputs = [self._module.InferRequestedOutput(name) for name in RESULTS]
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            result = self._client.infer(self.model, inputs, outputs=outputs, **kwargs)
        except self._utils.InferenceServerException as exc:
            message = (exc.message() or str(exc)).strip()
            status = str(exc.status() or "")
            if not status and ("onnect" in message or "refused" in message.lower()):
                raise self._unreachable(exc) from exc
            raise QuantError(f"Triton refused the request: {message[:300]}",
                             "check the image and the model name (--model)") from exc
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from exc
        return {name: result.as_numpy(name) for name in RESULTS}

    def detect_batch(self, images: list[bytes], *, conf: float | None = None, iou: float | None = None,
                     max_det: int | None = None, multi_label: bool = False) -> list[Detections]:
        """Detections for each encoded image, in original image pixels."""
        if not images:
            raise QuantError("no images given", "pass one or more image files")
        batch = len(images)
        encoded = np.empty((batch, 1), dtype=object)
        for i, data in enumerate(images):
            encoded[i, 0] = bytes(data)
        inputs = [self._input("image", encoded, "BYTES")]
        for name, value, dtype, np_dtype in (("conf_threshold", conf, "FP32", np.float32),
                                             ("iou_threshold", iou, "FP32", np.float32),
                                             ("max_det", max_det, "INT32", np.int32)):
            if value is not None:
                inputs.append(self._input(name, np.full((batch, 1), value, np_dtype), dtype))
        if multi_label:
            inputs.append(self._input("multi_label", np.ones((batch, 1), bool), "BOOL"))
        out = self.infer_raw(inputs)
        results = []
        for i in range(batch):
            n = int(out["num_detections"].reshape(batch, -1)[i, 0])
            results.append(Detections(out["boxes"][i, :n].astype(np.float64), out["scores"][i, :n].astype(np.float64),
                                      out["classes"][i, :n].astype(np.int64)))
        return results

    def detect(self, image: bytes, **options: Any) -> Detections:
        return self.detect_batch([image], **options)[0]

    def _config(self, model: str) -> dict[str, Any]:
        """A served model's config as JSON-like data (HTTP and gRPC alike)."""
        try:
            config = self._client.get_model_config(model)
        except self._utils.InferenceServerException as exc:
            raise QuantError(f"cannot read the {model} model's config: {exc.message()}",
                             "serve a repository written by vision-quant package") from exc
        except (ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from exc
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            return dict(MessageToDict(config.config, preserving_proto_field_name=True))
        return dict(config)

    def class_names(self) -> list[str]:
        """The class names the repository was packaged with (postprocess's ``class_names`` parameter)."""
        params = self._config("postprocess").get("parameters", {})
        names = json.loads(params.get("class_names", {}).get("string_value", "[]"))
        return [str(n) for n in names]

    def num_classes(self) -> int | None:
        """Class count from the detector's output dims ``[4 + classes, anchors]``; None where it cannot tell."""
        outputs = self._config("detector").get("output", [])
        dims = [int(d) for d in outputs[0].get("dims", [])] if outputs else []
        return dims[0] - 4 if len(dims) == 2 and dims[0] > 4 else None

    def close(self) -> None:
        self._client.close()


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise QuantError(f"cannot read image {path}: {exc.strerror or exc}", "check the path") from exc


def detect_files(client: DetectClient, images: list[Path], save_dir: str | os.PathLike[str] | None = None, *,
                 conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                 names: list[str] | None = None) -> list[dict[str, Any]]:
    """``vision-quant predict``'s records (same JSON schema), detected by the server; optionally drawn."""
    if not images:
        raise QuantError("no images given", "pass one or more image files")
    out = ensure_output_dir(save_dir) if save_dir is not None else None
    records = []
    for path in images:
        detections = client.detect(read_image_bytes(path), conf=conf, iou=iou, max_det=max_det)
        record = detection_record(path, detections, names)
        if out is not None:
            record["saved"] = str(save_drawn(out, path, load_image(path), detections, names))
        records.append(record)
    return records

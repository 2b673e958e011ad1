"""Plumbing the python-backend models of ``vision-quant package`` share (they run inside Triton's stub, where
``triton_python_backend_utils`` exists; this module takes it as an argument so it imports anywhere)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


def model_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The model's config.pbtxt ``parameters`` as plain strings."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def respond_each(requests: Sequence[Any], handle: Callable[[Any], Any], pb_utils: Any) -> list[Any]:
    """``handle(request)`` for each request; a request that raises gets an error response, the others are served."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the others down
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
    return responses

"""The one ``Runner`` contract every runtime implements (Polygraphy ``BaseRunner``).

Public ``activate/infer/deactivate`` guard state and check inputs; subclasses implement only the ``*_impl``
methods. Inputs and outputs are name -> ndarray dicts; ``inference_time`` holds the last call's seconds (the whole
call, or the span a runner times itself in ``timed_seconds``, e.g. TensorRT's enqueue and synchronization).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from quant_common.errors import QuantError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # str/None for dynamic dimensions
    dtype: np.dtype


class Runner(ABC):
    """Runs one artifact. Use as a context manager: ``with OnnxrtRunner(path) as r: r.infer(feeds)``."""

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.inference_time: float | None = None
        self.timed_seconds: float | None = None  # set by infer_impl to time less than the whole call

    # -- public API -------------------------------------------------------------------------------------
    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise QuantError(f"{self.name} is not active", "use it as a context manager or call activate() first")
        self._check_feeds(feeds)
        self.timed_seconds = None
        start = time.perf_counter()
        outputs = self.infer_impl(feeds)
        elapsed = time.perf_counter() - start
        # a runner that separates its device work from copies and allocation times that span itself (TrtRunner)
        self.inference_time = self.timed_seconds if self.timed_seconds is not None else elapsed
        return outputs

    def input_specs(self) -> list[TensorSpec]:
        self.activate()
        return self.input_specs_impl()

    def output_specs(self) -> list[TensorSpec]:
        self.activate()
        return self.output_specs_impl()

    @property
    def backend(self) -> str:
        """Short runtime name for reports (``onnxruntime``, ``tensorrt``)."""
        return self.name

    @property
    def device(self) -> str:
        return "cpu"

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()

    # -- for subclasses ---------------------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def input_specs_impl(self) -> list[TensorSpec]: ...

    @abstractmethod
    def output_specs_impl(self) -> list[TensorSpec]: ...

    def deactivate_impl(self) -> None:
        return None

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        specs = {spec.name: spec for spec in self.input_specs_impl()}
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        if missing or extra:
            raise QuantError(f"{self.name}: inputs do not match the model (missing {missing}, unexpected {extra})",
                             f"feed exactly {sorted(specs)}")
        for name, array in feeds.items():
            expected = specs[name].shape
            if len(expected) != array.ndim or any(
                isinstance(e, int) and e > 0 and e != a for e, a in zip(expected, array.shape, strict=False)
            ):
                raise QuantError(f"{self.name}: input '{name}' has shape {tuple(array.shape)}, the model expects "
                                 f"{tuple(expected)}", "resize the input or rebuild the model for that shape")

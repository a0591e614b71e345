"""The cut causal LM of `auto`'s judge_layers (pipeline/surrogates/lm_top.py): the top layers on cached
inputs reproduce the whole model, the layers above the cut never run while caching, and a cut that
cannot exist is refused with the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lm_fixtures import SENTENCES, make_tiny_lm

from albat.pipeline.surrogates.lm import load_causal_lm, tokenize
from albat.pipeline.surrogates.lm_top import StateCache, bottom_states, check_cut, decoder_layers, top_logits, top_model
from albat.stores.errors import AlbatError


@pytest.fixture(scope="module")
def lm3(tmp_path_factory: pytest.TempPathFactory):
    return load_causal_lm(make_tiny_lm(tmp_path_factory.mktemp("lm3"), layers=3), "cpu")


@pytest.mark.parametrize("k", [1, 2])
def test_the_cut_model_on_cached_inputs_gives_the_full_logits(lm3, k: int) -> None:
    import torch

    model, tok = lm3
    ids, mask = tokenize(tok, SENTENCES[:5], 16).batch(slice(None), "cpu")  # rows of different lengths: padding
    top = top_model(model, k)
    assert len(decoder_layers(top)) == k and len(decoder_layers(model)) == 3  # the original is untouched
    assert check_cut(model, top, k, ids, mask) < 1e-5
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        cut = top_logits(top, bottom_states(model, k, ids, mask), mask)
    real = mask.bool()
    np.testing.assert_allclose(cut[real].numpy(), full[real].numpy(), atol=1e-5)
    assert top.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # a copy


def test_caching_stops_below_the_cut(lm3) -> None:
    model, tok = lm3
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(decoder_layers(model))]
    try:
        ids, mask = tokenize(tok, SENTENCES[:3], 16).batch(slice(None), "cpu")
        states = bottom_states(model, 1, ids, mask)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [0, 1] and tuple(states.shape) == (3, ids.shape[1], model.config.hidden_size)


def test_the_state_cache_computes_each_text_once_and_pads_batches(lm3) -> None:
    model, tok = lm3
    cache = StateCache(model, tok, 1, 16, batch_size=2)
    tokens = tokenize(tok, SENTENCES[:3], 16)
    cache.fill(["a", "b", "c"], SENTENCES[:3])
    first = cache.states["a"]
    cache.fill(["a", "b", "c"], SENTENCES[:3])
    assert cache.states["a"] is first  # nothing recomputed
    lengths = tokens.mask.sum(1).tolist()
    assert [len(cache.states[k]) for k in "abc"] == lengths
    width = max(lengths) + 2
    out = cache.batch(["c", "a"], width)
    assert tuple(out.shape) == (2, width, model.config.hidden_size)
    np.testing.assert_array_equal(out[1, : lengths[0]].numpy(), first.numpy())
    assert float(out[1, lengths[0]:].abs().sum()) == 0.0  # zero padding on the right, masked in the loss


def test_a_cut_that_cannot_exist_names_the_full_fit(lm3) -> None:
    model, _ = lm3
    for k in (0, 3, 5):
        with pytest.raises(AlbatError, match="judge_layers=0"):
            top_model(model, k)

    class NoLayers:
        pass

    with pytest.raises(AlbatError, match="use judge_layers=0"):
        decoder_layers(NoLayers())


def test_check_cut_refuses_a_model_that_rescales_its_inputs(lm3) -> None:
    """A cut that does not reproduce the full model (here: the copy's top layer perturbed) is an error."""
    import torch

    model, tok = lm3
    top = top_model(model, 1)
    with torch.no_grad():
        decoder_layers(top)[0].mlp.down_proj.weight.mul_(3.0)
    ids, mask = tokenize(tok, SENTENCES[:2], 16).batch(slice(None), "cpu")
    with pytest.raises(AlbatError, match="does not reproduce the full model"):
        check_cut(model, top, 1, ids, mask)

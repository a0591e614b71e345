"""The `lm` surrogate and the cut judge on decoder families other than Llama (GPT-2, GPT-NeoX, OPT, Qwen2,
Mistral, Phi, Gemma, BLOOM, Falcon, GPT-J): tiny random checkpoints built offline with the shared test
tokenizer. A user's checkpoint may be any of them: LoRA must attach with peft's default targets, the
per-example gradient trick must still equal one-example autograd (fused Conv1D projections, ALiBi,
learned positions, scaled embeddings), padding must not leak into a row, and `judge_layers` must either
reproduce the full model's logits or refuse with the fix."""
from __future__ import annotations

import numpy as np
import pytest
from lm_fixtures import SENTENCES, make_tiny_arch
from test_surrogate_lm import autograd_rows

from albat.pipeline.surrogates.lm import LmSurrogate, load_causal_lm, tokenize
from albat.pipeline.surrogates.lm_top import check_cut, top_model
from albat.stores.errors import AlbatError

CUT = ["gpt_neox", "qwen2", "mistral", "phi", "gemma"]  # decoder layers at `<base>.layers`: judge_layers works
NO_CUT = ["gpt2", "opt", "bloom", "falcon", "gptj"]  # transformer.h, decoder.layers, ...: refused with the fix


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("arch")


@pytest.mark.parametrize("arch", CUT + NO_CUT)
def test_per_example_gradients_and_losses_on_other_decoder_families(root, arch: str) -> None:
    s = LmSurrogate(make_tiny_arch(root, arch), steps=3, batch_size=4, lr=1e-2, projection_dim=None, seed=0,
                    holdout_fraction=0.2)
    examples = s.examples(SENTENCES)  # different lengths, right-padded
    s.fit(examples, 0)
    grads = s.gradients(examples, "adapted")
    assert grads.shape[1] == s.grad_dim and np.abs(grads).max() > 0
    s._use("adapted")
    reference = autograd_rows(s, examples)
    np.testing.assert_allclose(grads, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    alone = [s.losses(examples.take([i]), "adapted")[0] for i in range(len(examples))]
    np.testing.assert_allclose(s.losses(examples, "adapted"), alone, rtol=1e-5)
    assert np.isfinite(s.fisher_trace(examples, "adapted", samples=2, seed=0)).all()


@pytest.mark.parametrize("arch", CUT + NO_CUT)
def test_the_cut_judge_reproduces_the_model_or_names_the_fix(root, arch: str) -> None:
    model, tokenizer = load_causal_lm(make_tiny_arch(root, arch), "cpu")
    ids, mask = tokenize(tokenizer, SENTENCES[:3], 32).batch(slice(None), "cpu")
    if arch in CUT:
        check_cut(model, top_model(model, 1), 1, ids, mask)  # raises where the cut's logits differ
    else:
        with pytest.raises(AlbatError, match=r"has none\); use judge_layers=0"):
            check_cut(model, top_model(model, 1), 1, ids, mask)

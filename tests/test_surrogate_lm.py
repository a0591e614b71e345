"""The `lm` surrogate on a tiny randomly initialised Llama: per-example gradients against one-example
autograd, the projection, the Fisher estimate against its exact value, and determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_fixtures import SENTENCES, make_tiny_lm

from albat.pipeline.surrogates.lm import LmSurrogate, load_causal_lm, token_nll, tokenize
from albat.stores.errors import AlbatError


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_lm(tmp_path_factory.mktemp("lm"))


def surrogate(path, **kw) -> LmSurrogate:
    opts = dict(steps=20, batch_size=4, lr=1e-2, projection_dim=None, seed=0)
    return LmSurrogate(path, **{**opts, **kw})


def autograd_rows(s: LmSurrogate, examples, targets=None) -> np.ndarray:
    """Each example's gradient by its own backward pass: the reference."""
    rows = []
    for i in range(len(examples)):
        ids, mask = examples.take([i]).batch(slice(None), "cpu")
        for p in s.params.values():
            p.grad = None
        with torch.enable_grad():
            token_nll(s.model, ids, mask, None if targets is None else targets[i:i + 1, :ids.shape[1]]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in s.params.values()]))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("state", ["initial", "adapted"])
def test_per_example_gradients_match_autograd(tiny_lm, state) -> None:
    s = surrogate(tiny_lm)
    examples = s.examples(SENTENCES)  # different lengths: padding must not leak into any row
    s.fit(examples, seed=0)
    grads = s.gradients(examples, state)
    s._use(state)
    reference = autograd_rows(s, examples)
    assert grads.shape == (len(SENTENCES), s.grad_dim)
    np.testing.assert_allclose(grads, reference, atol=1e-6 * np.abs(reference).max())
    if state == "initial":  # B = 0 at φ_0: only the B factors have a gradient
        lora_a = np.concatenate([np.full(p.numel(), "lora_A" in n) for n, p in s.params.items()])
        assert np.all(grads[:, lora_a] == 0) and np.abs(grads[:, ~lora_a]).max() > 0


def test_projection_is_the_exact_gradient_times_a_seeded_gaussian(tiny_lm) -> None:
    exact = surrogate(tiny_lm)
    projected = surrogate(tiny_lm, projection_dim=512, projection_seed=7)
    again = surrogate(tiny_lm, projection_dim=512, projection_seed=7, projection_cache_bytes=0)  # regenerated blocks
    examples = exact.examples(SENTENCES)
    g, p = exact.gradients(examples, "initial"), projected.gradients(examples, "initial")
    R = torch.cat([projected._block(i) for i in range(len(projected.params))]).numpy()
    assert p.shape == (len(SENTENCES), 512)
    np.testing.assert_allclose(p, g @ R, rtol=1e-4, atol=1e-6 * np.abs(p).max())
    np.testing.assert_array_equal(p, again.gradients(examples, "initial"))
    # Johnson-Lindenstrauss: norms survive to within a few 1/sqrt(k)
    ratio = np.linalg.norm(p, axis=1) / np.linalg.norm(g, axis=1)
    assert np.all(np.abs(ratio - 1) < 0.25), ratio
    other = surrogate(tiny_lm, projection_dim=512, projection_seed=8).gradients(examples, "initial")
    assert not np.allclose(other, p)


def test_initial_state_is_the_backbone(tiny_lm) -> None:
    s = surrogate(tiny_lm)
    model, tokenizer = load_causal_lm(tiny_lm)
    examples = tokenize(tokenizer, SENTENCES, 128)
    with torch.no_grad():
        plain = token_nll(model, examples.ids, examples.mask).double().numpy()
    np.testing.assert_allclose(s.losses(s.examples(SENTENCES), "initial"), plain, rtol=1e-5)


def test_fit_lowers_the_adaptation_loss_and_is_deterministic(tiny_lm) -> None:
    runs = []
    for _ in range(2):
        s = surrogate(tiny_lm, steps=30, holdout_fraction=0.0, projection_dim=64)
        examples = s.examples(SENTENCES[:6])
        report = s.fit(examples, seed=3)
        runs.append((report, s.losses(examples, "initial"), s.losses(examples, "adapted"),
                     s.gradients(examples, "adapted"), s.fisher_trace(examples, "adapted", 3, seed=5)))
    (report, loss0, loss_s, grads, fisher), second = runs
    assert loss_s.mean() < loss0.mean() - 0.1
    assert report == second[0]
    for a, b in zip(runs[0][1:], second[1:]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_keeps_the_best_held_out_state(tiny_lm) -> None:
    s = surrogate(tiny_lm, steps=40, holdout_fraction=0.3)
    report = s.fit(s.examples(SENTENCES), seed=0)
    assert report["holdout_texts"] == 3
    assert report["holdout_loss"] <= report["holdout_loss_at_init"]
    assert 0 <= report["best_step"] <= 40 and report["best_step"] % 10 == 0


def test_fisher_trace_matches_its_exact_expectation(tiny_lm) -> None:
    """The curvature of ℓ = mean over T next-token predictions is (1/T) Σ_t tr F_t,
    tr F_t = Σ_v p_t(v) ‖∇ log p_t(v)‖², enumerated over the vocabulary; the sampled estimate
    (T · E_ŷ‖∇ℓ(ŷ)‖², the ŷ_t independent with mean-zero scores) must match it."""
    s = surrogate(tiny_lm, batch_size=512)
    example = s.examples(SENTENCES[4:5])
    ids, mask = example.batch(slice(None), "cpu")
    s._use("initial")
    T = ids.shape[1] - 1
    exact = 0.0
    for t in range(T):
        with torch.no_grad():
            probs = torch.softmax(s.model(input_ids=ids, attention_mask=mask).logits[0, t], -1)
        for v in range(len(probs)):
            for p in s.params.values():
                p.grad = None
            with torch.enable_grad():
                torch.log_softmax(s.model(input_ids=ids, attention_mask=mask).logits[0, t], -1)[v].backward()
            exact += float(probs[v]) * sum(float(p.grad.pow(2).sum()) for p in s.params.values())
    exact /= T
    estimate = s.fisher_trace(example, "initial", samples=512, seed=0)
    assert estimate.shape == (1,)
    assert abs(estimate[0] / exact - 1) < 0.15, (estimate, exact)


def test_fisher_along_a_direction_is_the_squared_projection(tiny_lm) -> None:
    s = surrogate(tiny_lm)
    examples = s.examples(SENTENCES[:4])
    u = np.zeros(s.grad_dim, np.float32)
    trace = s.fisher_trace(examples, "initial", 4, seed=1)
    along = s.fisher_trace(examples, "initial", 4, seed=1, direction=u)
    assert np.all(trace > 0) and np.all(along == 0)
    u[np.argmax(np.abs(s.gradients(examples, "initial")).sum(0))] = 1.0
    along = s.fisher_trace(examples, "initial", 4, seed=1, direction=u)
    assert np.all(along >= 0) and np.all(along <= trace + 1e-9) and along.max() > 0


def test_a_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(AlbatError, match="not a local Hugging Face checkpoint"):
        LmSurrogate(tmp_path / "nowhere")


def test_unit_log_likelihoods_are_the_per_token_terms_of_the_loss(tiny_lm) -> None:
    """`albat mix` mixes experts token by token: the units, averaged per example, give back the loss."""
    s = surrogate(tiny_lm)
    examples = s.examples(SENTENCES)
    units = s.unit_log_likelihoods(examples, "initial")
    counts = examples.mask[:, 1:].sum(1).numpy().astype(int)  # predicted tokens of each example
    assert len(units) == counts.sum() and np.all(units <= 0)
    per_example = -np.array([chunk.mean() for chunk in np.split(units, np.cumsum(counts)[:-1])])
    np.testing.assert_allclose(per_example, s.losses(examples, "initial"), rtol=1e-5)

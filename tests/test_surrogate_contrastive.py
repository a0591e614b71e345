"""The contrastive surrogate's scores on tiny hand-checkable inputs: closed-form per-example
gradients against torch.autograd and finite differences, the sketch against its definition, the
Fisher-trace estimator against its exact value, and determinism under a seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from albat.pipeline.surrogates.contrastive import ContrastiveSurrogate, Pairs, adapt, batch_losses, train_adapter, two_views


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def tiny():
    rng = np.random.default_rng(0)
    d, k, n = 6, 5, 4
    surrogate = ContrastiveSurrogate(Pairs(_unit(rng, k, d), _unit(rng, k, d)), projection_dim=None)
    surrogate.Ws = torch.from_numpy(0.2 * rng.standard_normal((d, d)).astype(np.float32))
    return surrogate, Pairs(_unit(rng, n, d), _unit(rng, n, d))


def _loss(W: torch.Tensor, s: ContrastiveSurrogate, ex: Pairs, i: int) -> torch.Tensor:
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return batch_losses(adapt(t(ex.query[i:i + 1]), W), adapt(t(ex.doc[i:i + 1]), W),
                        adapt(t(s.bank.query), W), adapt(t(s.bank.doc), W), in_batch=False)[0]


def test_gradients_match_autograd(tiny):
    surrogate, ex = tiny
    grads = surrogate.gradients(ex, "adapted")
    assert grads.shape == (4, 36)
    for i in range(len(ex)):
        W = surrogate.Ws.clone().requires_grad_(True)
        (reference,) = torch.autograd.grad(_loss(W, surrogate, ex, i), W)
        np.testing.assert_allclose(grads[i], reference.numpy().ravel(), atol=1e-5)


def test_gradients_match_finite_differences(tiny):
    surrogate, ex = tiny
    grads = surrogate.gradients(ex, "adapted").reshape(len(ex), 6, 6)
    W64 = surrogate.Ws.double()
    ex64 = Pairs(ex.query.astype(np.float64), ex.doc.astype(np.float64))
    surrogate64 = ContrastiveSurrogate(Pairs(surrogate.bank.query.astype(np.float64),
                                             surrogate.bank.doc.astype(np.float64)), projection_dim=None)
    eps = 1e-6
    for (a, b) in [(0, 0), (2, 5), (4, 1)]:
        bump = torch.zeros_like(W64)
        bump[a, b] = eps
        for i in range(len(ex)):
            numeric = (_loss(W64 + bump, surrogate64, ex64, i) - _loss(W64 - bump, surrogate64, ex64, i)) / (2 * eps)
            assert grads[i, a, b] == pytest.approx(numeric.item(), abs=1e-4)


def test_loss_is_the_backbone_loss_at_initialisation(tiny):
    surrogate, ex = tiny
    x = torch.from_numpy(ex.doc)
    assert torch.allclose(adapt(x, torch.zeros(6, 6)), x)
    expected = [_loss(torch.zeros(6, 6), surrogate, ex, i).item() for i in range(len(ex))]
    np.testing.assert_allclose(surrogate.losses(ex, "initial"), expected, rtol=1e-5)
    assert not np.allclose(surrogate.losses(ex, "adapted"), expected)


def test_sketch_is_the_projection_of_the_exact_gradient(tiny):
    surrogate, ex = tiny
    exact = torch.from_numpy(surrogate.gradients(ex, "adapted")).reshape(len(ex), 6, 6)
    sketched = ContrastiveSurrogate(surrogate.bank, projection_dim=9, projection_seed=3)
    sketched.Ws = surrogate.Ws
    P1, P2 = sketched.projection
    expected = torch.einsum("ra,nab,sb->nrs", P1, exact, P2).reshape(len(ex), -1).numpy()
    np.testing.assert_allclose(sketched.gradients(ex, "adapted"), expected, atol=1e-5)
    assert sketched.gradients(ex, "adapted").shape == (4, 9)


def test_sketch_preserves_squared_norms_on_average():
    rng = np.random.default_rng(1)
    d = 32
    bank, ex = Pairs(_unit(rng, 8, d), _unit(rng, 8, d)), Pairs(_unit(rng, 50, d), _unit(rng, 50, d))
    exact = ContrastiveSurrogate(bank, projection_dim=None).gradients(ex, "initial")
    single = [np.sum(ContrastiveSurrogate(bank, projection_dim=256, projection_seed=s).gradients(ex, "initial") ** 2)
              for s in range(20)]
    assert np.mean(single) / np.sum(exact ** 2) == pytest.approx(1.0, abs=0.1)


def _exact_fisher(surrogate: ContrastiveSurrogate, ex: Pairs, i: int) -> float:
    """¼ (Σ_j p_q,j ‖∇ log p_q,j‖² + Σ_j p_d,j ‖∇ log p_d,j‖²), by enumerating every label with autograd."""
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    total = 0.0
    for side in ("q", "d"):
        W = surrogate.Ws.clone().requires_grad_(True)
        q, d = adapt(t(ex.query[i:i + 1]), W)[0], adapt(t(ex.doc[i:i + 1]), W)[0]
        bq, bd = adapt(t(surrogate.bank.query), W), adapt(t(surrogate.bank.doc), W)
        z = surrogate.scale * (torch.cat([(q * d).sum()[None], bd @ q]) if side == "q" else torch.cat([(q * d).sum()[None], bq @ d]))
        logp = torch.log_softmax(z, 0)
        for j in range(len(z)):
            (g,) = torch.autograd.grad(logp[j], W, retain_graph=True)
            total += 0.25 * logp[j].exp().item() * g.pow(2).sum().item()
    return total


def test_fisher_trace_estimator_matches_the_exact_value(tiny):
    peaked, ex = tiny
    # a flatter softmax (scale 3, not 20), so that 2000 sampled labels see every label's weight
    surrogate = ContrastiveSurrogate(peaked.bank, projection_dim=None, scale=3.0)
    surrogate.Ws = peaked.Ws
    estimate = surrogate.fisher_trace(ex, "adapted", samples=2000, seed=0)
    exact = np.array([_exact_fisher(surrogate, ex, i) for i in range(len(ex))])
    np.testing.assert_allclose(estimate, exact, rtol=0.1)
    assert np.all(exact > 0)


def test_scores_are_deterministic_under_a_seed(tiny):
    surrogate, ex = tiny
    a = surrogate.fisher_trace(ex, "adapted", samples=2, seed=5)
    assert np.array_equal(a, surrogate.fisher_trace(ex, "adapted", samples=2, seed=5))
    assert not np.array_equal(a, surrogate.fisher_trace(ex, "adapted", samples=2, seed=6))


def _task(seed: int, n: int, d: int = 16):
    """Queries are a fixed rotation of their documents plus noise: a linear adapter can learn it."""
    rng = np.random.default_rng(seed)
    doc = _unit(rng, n, d)
    R = np.linalg.qr(np.random.default_rng(99).standard_normal((d, d)))[0].astype(np.float32)
    query = doc @ R.T + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return Pairs((query / np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float32), doc)


def test_fit_learns_and_is_deterministic():
    bank, train = _task(1, 32), _task(2, 64)
    surrogate = ContrastiveSurrogate(bank, steps=60, lr=1e-2, projection_dim=64)
    report = surrogate.fit(train, seed=3)
    assert report["holdout_pairs"] == 16 and report["holdout_loss"] < report["holdout_loss_at_init"]
    test = _task(4, 40)
    assert surrogate.losses(test, "adapted").mean() < surrogate.losses(test, "initial").mean()
    again = ContrastiveSurrogate(bank, steps=60, lr=1e-2, projection_dim=64)
    again.fit(train, seed=3)
    assert torch.equal(surrogate.Ws, again.Ws)


def test_backbone_weight_scales_the_extra_term():
    bank, train, extra = _task(1, 16), _task(2, 8), _task(5, 8)
    kwargs = dict(steps=5, lr=1e-2, batch_size=8, seed=0)
    W_none, _ = train_adapter(train, bank, **kwargs)
    W_zero, _ = train_adapter(train, bank, extra=extra, backbone_weight=0.0, **kwargs)
    W_one, _ = train_adapter(train, bank, extra=extra, backbone_weight=1.0, **kwargs)
    assert not torch.allclose(W_zero, W_one)
    # λ = 0 leaves only the adaptation term, though the extra rows still serve as in-batch negatives
    assert not torch.allclose(W_none, W_one)


def test_two_views_are_seeded_unit_rows():
    x = _unit(np.random.default_rng(0), 5, 8)
    a, b = two_views(x, 0.5, 1), two_views(x, 0.5, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, two_views(x, 0.5, 2))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert np.all(np.sum(a * x, axis=1) > 0.5)


def test_directional_fisher_is_the_quadratic_form_along_the_direction(tiny):
    peaked, ex = tiny
    surrogate = ContrastiveSurrogate(peaked.bank, projection_dim=None, scale=3.0)
    surrogate.Ws = peaked.Ws
    u = np.zeros(36, np.float32)
    u[7] = 1.0  # one coordinate of W: uᵀFu is the Fisher's diagonal entry for W[1, 1]
    along = surrogate.fisher_trace(ex, "adapted", samples=2000, seed=0, direction=u)
    # the same labels give a per-coordinate share of the trace: along one axis it is smaller
    total = surrogate.fisher_trace(ex, "adapted", samples=2000, seed=0)
    assert np.all(along <= total + 1e-9) and np.all(along > 0)
    # and summed over a full orthonormal basis it is the trace itself
    basis = np.eye(36, dtype=np.float32)
    summed = sum(surrogate.fisher_trace(ex, "adapted", samples=50, seed=1, direction=b) for b in basis)
    np.testing.assert_allclose(summed, surrogate.fisher_trace(ex, "adapted", samples=50, seed=1), rtol=1e-4)


def test_patience_stops_early_and_keeps_the_same_best() -> None:
    import numpy as np
    import torch

    from albat.pipeline.surrogates.contrastive import Pairs, train_adapter

    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 16)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train, held, bank = Pairs(unit(12), unit(12)), Pairs(unit(4), unit(4)), Pairs(unit(8), unit(8))
    kw = dict(steps=200, lr=1e-2, batch_size=8, seed=1, holdout=held)
    W_full, full = train_adapter(train, bank, **kw)
    W_fast, fast = train_adapter(train, bank, patience=2, **kw)
    assert full["stopped_step"] == 200
    assert fast["stopped_step"] - fast["best_step"] == 20 or fast["stopped_step"] == 200
    if full["best_step"] <= fast["stopped_step"]:  # the best came before the stop: the same W
        assert fast["best_step"] == full["best_step"] and torch.equal(W_fast, W_full)

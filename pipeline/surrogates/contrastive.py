"""`contrastive` surrogate: a residual linear adapter on the store's cached, frozen embeddings.

    x' = normalise(x + W x),   W ∈ R^{d×d} initialised to zero, so φ_0 is the backbone itself.

It is trained with symmetric InfoNCE (temperature 1/SCALE) on (query, document) pairs: title and
text, question and answer, caption and image. It runs on cached vectors, so it costs a few
milliseconds per candidate on a CPU and serves text now and CLIP image-caption pairs later.

Per-example loss of a pair z = (q, d), used to score candidates, is taken against a fixed, seeded
bank of K backbone pairs (all vectors, bank included, go through the adapter):

    ℓ(z) = ½ [ CE(SCALE·q'·[d', b'_d1..K], 0) + CE(SCALE·d'·[q', b'_q1..K], 0) ]

Training uses the same loss with the other pairs of the batch as extra negatives.

Per-example gradients. With u = x + W x, ∂ℓ/∂W = Σ_j δ_j x_jᵀ over every vector j the loss sees
(q, d and the 2K bank vectors), δ_j = ∂ℓ/∂u_j, in closed form (`logit_grads`, checked against
autograd and finite differences in the tests). G is sketched with a seeded Kronecker Gaussian
projection P1 G P2ᵀ (P1, P2 ∈ R^{r×d}, entries N(0, 1/r)), which keeps E‖·‖² = ‖G‖_F² and inner
products in expectation; the bank's terms reduce to precomputed r×r outer products, so a
candidate costs O(K·(d + r²)) instead of the O(K·d²) of materialising G.

Single-column data has no pairs: `two_views` makes the query side a seeded, noised copy of the
document embedding (an embedding-space augmentation, as SimCSE uses dropout noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from albat.pipeline.options import defaults
from albat.pipeline.progress import tracked_range, tracked_slices
from albat.pipeline.surrogates.base import State, Surrogate, holdout_split, row_slices
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS

DEFAULT = defaults(SURROGATE_OPTIONS)  # the options' defaults are declared once, in pipeline.surrogates.options

SCALE = 20.0  # 1/temperature, as in sentence-transformers' MultipleNegativesRankingLoss


@dataclass
class Pairs:
    """(query side, document side) embeddings of n pairs, unit rows."""

    query: np.ndarray
    doc: np.ndarray

    def __len__(self) -> int:
        return len(self.doc)

    def take(self, rows: np.ndarray) -> "Pairs":
        return Pairs(self.query[rows], self.doc[rows])


def two_views(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """The query view of single-column data: normalise(x + σ·ε), ε ~ N(0, I/d), seeded."""
    rng = np.random.default_rng(seed)
    noisy = x + sigma * rng.standard_normal(x.shape).astype(np.float32) / math.sqrt(x.shape[1])
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def adapt(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    return F.normalize(x + x @ W.T, dim=-1)


def batch_losses(q: torch.Tensor, d: torch.Tensor, bank_q: torch.Tensor, bank_d: torch.Tensor,
                 in_batch: bool, scale: float = SCALE) -> torch.Tensor:
    """Per-row symmetric InfoNCE of adapted unit vectors; negatives: the bank, plus the other rows
    of the batch when `in_batch`."""
    n = len(q)
    if in_batch:
        logits_q = scale * q @ torch.cat([d, bank_d]).T  # row i's positive is column i
        logits_d = scale * d @ torch.cat([q, bank_q]).T
        target = torch.arange(n)
    else:
        pos = scale * (q * d).sum(-1, keepdim=True)
        logits_q = torch.cat([pos, scale * q @ bank_d.T], 1)
        logits_d = torch.cat([pos, scale * d @ bank_q.T], 1)
        target = torch.zeros(n, dtype=torch.long)
    return 0.5 * (F.cross_entropy(logits_q, target, reduction="none") + F.cross_entropy(logits_d, target, reduction="none"))


def _unit(x: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = x + W x, returned as (u/‖u‖, ‖u‖)."""
    u = x + x @ W.T
    norm = u.norm(dim=-1, keepdim=True)
    return u / norm, norm


@dataclass
class LogitGrads:
    """For a chunk of n examples, everything ∂ℓ/∂W needs, in closed form.

    Logits: z_q = s·[q̂·d̂, q̂·b̂_d1..K] and z_d = s·[d̂·q̂, d̂·b̂_q1..K]; with labels (y_q, y_d) the
    loss ½[CE(z_q, y_q) + CE(z_d, y_d)] has ∂/∂z_q = e = ½(softmax(z_q) − onehot(y_q)), ∂/∂z_d = f.
    Through x̂ = u/‖u‖ (∂x̂/∂u = (I − x̂x̂ᵀ)/‖u‖) this gives δ_u for q, d and every bank vector:
        δ_q  = P_q s[(e_0 + f_0) d̂ + Σ_k e_k b̂_dk] / ‖u_q‖      (P_x = I − x̂x̂ᵀ)
        δ_d  = P_d s[(e_0 + f_0) q̂ + Σ_k f_k b̂_qk] / ‖u_d‖
        δ_dk = α_k (q̂ − β_k b̂_dk),  α_k = s e_k/‖u_dk‖,  β_k = q̂·b̂_dk     (bank documents)
        δ_qk = α'_k (d̂ − β'_k b̂_qk), α'_k = s f_k/‖u_qk‖, β'_k = d̂·b̂_qk   (bank queries)
    and ∂ℓ/∂W = Σ_j δ_j x_jᵀ over the raw inputs x_j.
    """

    delta_q: torch.Tensor  # (n, d)
    delta_d: torch.Tensor
    q_hat: torch.Tensor
    d_hat: torch.Tensor
    alpha_d: torch.Tensor  # (n, K): α_k, bank documents
    beta_d: torch.Tensor
    alpha_q: torch.Tensor  # (n, K): α'_k, bank queries
    beta_q: torch.Tensor


def pair_logits(q_hat, d_hat, bank_q_hat, bank_d_hat, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """z_q = s·[q̂·d̂, q̂·b̂_d1..K] and z_d = s·[d̂·q̂, d̂·b̂_q1..K]: the positive is column 0."""
    pos = scale * (q_hat * d_hat).sum(-1, keepdim=True)
    return torch.cat([pos, scale * q_hat @ bank_d_hat.T], 1), torch.cat([pos, scale * d_hat @ bank_q_hat.T], 1)


def logit_grads(q_hat, nq, d_hat, nd, bank_q_hat, nbq, bank_d_hat, nbd, labels_q, labels_d, scale) -> LogitGrads:
    zq, zd = pair_logits(q_hat, d_hat, bank_q_hat, bank_d_hat, scale)
    e = 0.5 * (torch.softmax(zq, 1) - F.one_hot(labels_q, zq.shape[1]))
    f = 0.5 * (torch.softmax(zd, 1) - F.one_hot(labels_d, zd.shape[1]))
    tie = (e[:, :1] + f[:, :1])
    g_q = scale * (tie * d_hat + e[:, 1:] @ bank_d_hat)
    g_d = scale * (tie * q_hat + f[:, 1:] @ bank_q_hat)
    delta_q = (g_q - (g_q * q_hat).sum(-1, keepdim=True) * q_hat) / nq
    delta_d = (g_d - (g_d * d_hat).sum(-1, keepdim=True) * d_hat) / nd
    return LogitGrads(delta_q, delta_d, q_hat, d_hat,
                      alpha_d=scale * e[:, 1:] / nbd.T, beta_d=zq[:, 1:] / scale,
                      alpha_q=scale * f[:, 1:] / nbq.T, beta_q=zd[:, 1:] / scale)


def train_adapter(train: Pairs, bank: Pairs, *, steps: int, lr: float, batch_size: int, seed: int,
                  extra: Pairs | None = None, extra_weight: np.ndarray | None = None, backbone_weight: float = 1.0,
                  holdout: Pairs | None = None, eval_every: int = 10, scale: float = SCALE,
                  patience: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Adam on L = mean_{a∈train} ℓ(a) + λ · mean_{b∈extra} w_b ℓ(b), in-batch + bank negatives.

    With `holdout`, keep the W with the lowest held-out loss (early stopping); with `patience`, stop
    once that many evaluations in a row found no lower held-out loss (the kept W is the same as
    without it whenever the held-out loss never comes back below its best after such a run)."""
    rng = np.random.default_rng(seed)
    dim = train.doc.shape[1]
    W = torch.zeros(dim, dim, requires_grad=True)
    opt = torch.optim.Adam([W], lr=lr)
    tq, td = torch.from_numpy(train.query), torch.from_numpy(train.doc)
    bq, bd = torch.from_numpy(bank.query), torch.from_numpy(bank.doc)
    if extra is not None and len(extra):
        eq, ed = torch.from_numpy(extra.query), torch.from_numpy(extra.doc)
        ew = torch.from_numpy(np.ones(len(extra), np.float32) if extra_weight is None else extra_weight.astype(np.float32))
    else:
        extra = None
    best = (math.inf, W.detach().clone(), 0)
    history = []
    for step in tracked_range(steps + 1, "contrastive surrogate: fit"):
        if holdout is not None and step % eval_every == 0:
            with torch.no_grad():
                h = batch_losses(adapt(torch.from_numpy(holdout.query), W), adapt(torch.from_numpy(holdout.doc), W),
                                 adapt(bq, W), adapt(bd, W), in_batch=True, scale=scale).mean().item()
            history.append((step, h))
            if h < best[0]:
                best = (h, W.detach().clone(), step)
            elif patience is not None and step - best[2] >= patience * eval_every:
                break
        if step == steps:
            break
        a = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        q, d = [tq[a]], [td[a]]
        if extra is not None:
            b = rng.choice(len(extra), size=min(batch_size, len(extra)), replace=False)
            q.append(eq[b])
            d.append(ed[b])
        losses = batch_losses(adapt(torch.cat(q), W), adapt(torch.cat(d), W), adapt(bq, W), adapt(bd, W),
                              in_batch=True, scale=scale)
        loss = losses[: len(a)].mean()
        if extra is not None:
            loss = loss + backbone_weight * (ew[b] * losses[len(a):]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if holdout is None:
        return W.detach(), {"steps": steps}
    return best[1], {"steps": steps, "stopped_step": step, "best_step": best[2], "holdout_loss": round(best[0], 5),
                     "holdout_loss_at_init": round(history[0][1], 5)}


@dataclass
class _BankTerms:
    """The bank's share of every gradient at one W, computed once per call, not per chunk.

    x_q, x_d are the raw bank inputs (or their P2 sketch); outer_q/outer_d hold the per-bank-vector
    r×r outer products (P1 b̂)(P2 x)ᵀ when gradients are sketched."""

    x_q: torch.Tensor
    x_d: torch.Tensor
    hat_q: torch.Tensor
    norm_q: torch.Tensor
    hat_d: torch.Tensor
    norm_d: torch.Tensor
    outer_q: torch.Tensor | None = None
    outer_d: torch.Tensor | None = None


class ContrastiveSurrogate(Surrogate):
    name = "contrastive"

    def __init__(self, bank: Pairs, *, steps: int = DEFAULT["steps"], lr: float = DEFAULT["lr"],
                 batch_size: int = DEFAULT["batch_size"], holdout_fraction: float = DEFAULT["holdout_fraction"],
                 projection_dim: int | None = DEFAULT["projection_dim"], projection_seed: int = 0,
                 chunk: int = 128, scale: float = SCALE, patience: int | None = 10):
        self.bank = bank
        self.dim = bank.doc.shape[1]
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self.holdout_fraction, self.chunk, self.scale = holdout_fraction, chunk, scale
        self.patience = patience  # evaluations (10 steps each) without a better held-out loss before stopping
        self.W0 = torch.zeros(self.dim, self.dim)
        self.Ws = self.W0
        self.projection: tuple[torch.Tensor, torch.Tensor] | None = None
        if projection_dim:
            r = max(1, round(math.sqrt(projection_dim)))
            rng = np.random.default_rng(projection_seed)
            self.projection = tuple(torch.from_numpy((rng.standard_normal((r, self.dim)) / math.sqrt(r)).astype(np.float32))
                                    for _ in range(2))

    def fit(self, adaptation: Pairs, seed: int) -> dict[str, Any]:
        """Train φ_s on the adaptation pairs, early-stopped on a held-out quarter (none below 4 pairs)."""
        held, train = holdout_split(len(adaptation), self.holdout_fraction, np.random.default_rng(seed))
        holdout = adaptation.take(held) if len(held) else None
        self.Ws, report = train_adapter(adaptation.take(train), self.bank, steps=self.steps, lr=self.lr,
                                        batch_size=self.batch_size, seed=seed, holdout=holdout, scale=self.scale,
                                        patience=self.patience)
        return {**report, "holdout_pairs": len(held)}

    def _W(self, state: State) -> torch.Tensor:
        return self.Ws if state == "adapted" else self.W0

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    @torch.no_grad()
    def losses(self, examples: Pairs, state: State) -> np.ndarray:
        W = self._W(state)
        bq, bd = adapt(self._t(self.bank.query), W), adapt(self._t(self.bank.doc), W)
        out = [batch_losses(adapt(self._t(examples.query[s]), W), adapt(self._t(examples.doc[s]), W),
                            bq, bd, in_batch=False, scale=self.scale)
               for s in tracked_slices(row_slices(len(examples), self.chunk), len(examples), "contrastive surrogate: losses")]
        return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)

    def _bank_terms(self, W: torch.Tensor) -> _BankTerms:
        xq, xd = self._t(self.bank.query), self._t(self.bank.doc)
        (hat_q, norm_q), (hat_d, norm_d) = _unit(xq, W), _unit(xd, W)
        if self.projection is None:
            return _BankTerms(xq, xd, hat_q, norm_q, hat_d, norm_d)
        P1, P2 = self.projection
        xq_p, xd_p = xq @ P2.T, xd @ P2.T
        return _BankTerms(xq_p, xd_p, hat_q, norm_q, hat_d, norm_d,
                          outer_q=torch.einsum("kr,ks->krs", hat_q @ P1.T, xq_p),
                          outer_d=torch.einsum("kr,ks->krs", hat_d @ P1.T, xd_p))

    def _gradient_matrix(self, g: LogitGrads, xq, xd, bank: _BankTerms) -> torch.Tensor:
        """G = Σ_j δ_j x_jᵀ per example: (n, d·d) exact, or (n, r·r) as P1 G P2ᵀ."""
        outer = lambda a, b: torch.einsum("na,nb->nab", a, b)  # noqa: E731
        if self.projection is None:
            G = (outer(g.delta_q, xq) + outer(g.delta_d, xd)
                 + outer(g.q_hat, g.alpha_d @ bank.x_d) - torch.einsum("nk,ka,kb->nab", g.alpha_d * g.beta_d, bank.hat_d, bank.x_d)
                 + outer(g.d_hat, g.alpha_q @ bank.x_q) - torch.einsum("nk,ka,kb->nab", g.alpha_q * g.beta_q, bank.hat_q, bank.x_q))
            return G.reshape(len(xq), -1)
        P1, P2 = self.projection
        G = (outer(g.delta_q @ P1.T, xq @ P2.T) + outer(g.delta_d @ P1.T, xd @ P2.T)
             + outer(g.q_hat @ P1.T, g.alpha_d @ bank.x_d) - torch.einsum("nk,krs->nrs", g.alpha_d * g.beta_d, bank.outer_d)
             + outer(g.d_hat @ P1.T, g.alpha_q @ bank.x_q) - torch.einsum("nk,krs->nrs", g.alpha_q * g.beta_q, bank.outer_q))
        return G.reshape(len(xq), -1)

    @torch.no_grad()
    def _per_example(self, examples: Pairs, state: State, samples: int = 0, seed: int = 0,
                     direction: np.ndarray | None = None) -> np.ndarray:
        """Gradients of ℓ (samples=0), or Fisher-trace estimates: the mean over `samples` labels
        ŷ ~ p_φ(·|z) of ‖∇ ½[log p_q(ŷ_q) + log p_d(ŷ_d)]‖² (the same closed form, labels sampled)."""
        W = self._W(state)
        bank = self._bank_terms(W)
        gen = torch.Generator().manual_seed(seed)
        u = None if direction is None else torch.from_numpy(np.asarray(direction, dtype=np.float32))
        out = []
        what = "curvature" if samples else "gradients"
        for s in tracked_slices(row_slices(len(examples), self.chunk, max(1, samples)), len(examples),
                                f"contrastive surrogate: {what}"):
            xq, xd = self._t(examples.query[s]), self._t(examples.doc[s])
            (qh, nq), (dh, nd) = _unit(xq, W), _unit(xd, W)
            banks = (bank.hat_q, bank.norm_q, bank.hat_d, bank.norm_d)
            if not samples:
                zeros = torch.zeros(len(xq), dtype=torch.long)
                g = logit_grads(qh, nq, dh, nd, *banks, zeros, zeros, self.scale)
                out.append(self._gradient_matrix(g, xq, xd, bank))
                continue
            zq, zd = pair_logits(qh, dh, bank.hat_q, bank.hat_d, self.scale)
            labels_q = torch.multinomial(torch.softmax(zq, 1), samples, replacement=True, generator=gen).reshape(-1)
            labels_d = torch.multinomial(torch.softmax(zd, 1), samples, replacement=True, generator=gen).reshape(-1)
            rep = lambda t: t.repeat_interleave(samples, 0)  # noqa: E731  (row i's samples are adjacent)
            g = logit_grads(*map(rep, (qh, nq, dh, nd)), *banks, labels_q, labels_d, self.scale)
            G = self._gradient_matrix(g, rep(xq), rep(xd), bank)
            norms = (G.pow(2).sum(1) if direction is None else (G @ u).pow(2)).double()
            trace = norms.reshape(len(xq), samples).sum(1)
            out.append(trace / samples)
        if not out:
            return np.empty((0, self.grad_dim) if not samples else 0)
        return torch.cat(out).numpy().astype(np.float64 if samples else np.float32)

    @property
    def grad_dim(self) -> int:
        return self.dim * self.dim if self.projection is None else self.projection[0].shape[0] ** 2

    def gradients(self, examples: Pairs, state: State) -> np.ndarray:
        return self._per_example(examples, state)

    def fisher_trace(self, examples: Pairs, state: State, samples: int = 2, seed: int = 0,
                     direction: np.ndarray | None = None) -> np.ndarray:
        return self._per_example(examples, state, samples=max(1, samples), seed=seed, direction=direction)

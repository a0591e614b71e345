"""`lm` surrogate: a LoRA adapter (peft) on a Hugging Face causal language model, the paper's
language-generation setting.

    ℓ(φ; z) = mean over the tokens of z (after a leading BOS/EOS, truncated to `max_length`)
              of −log p_φ(z_t | z_<t)

φ is the LoRA parameters only (the backbone is frozen); φ_0 is peft's initialisation, where
B = 0 so the adapted model *is* the backbone, and φ_s is the adapter trained with AdamW on the
adaptation texts, early-stopped on a held-out fraction of them.

Per-example gradients. Every LoRA factor is an `nn.Linear` (y = x Wᵀ) whose input x_{i,t} and
output gradient δ_{i,t} = ∂L/∂y_{i,t} are captured for a whole batch in one backward pass of
L = Σ_i ℓ_i. Examples do not interact in a causal LM (padding is on the right and masked), so
example i's gradient is exactly Σ_t δ_{i,t}ᵀ x_{i,t}, the per-sample trick of Opacus; it is checked
against one-example autograd in the tests. Gradients are projected to `projection_dim` numbers
with a seeded Gaussian matrix R ∈ R^{P×k}, entries N(0, 1/k), generated block by block per LoRA
factor (as LESS projects LoRA gradients), so memory per example stays flat.

Fisher trace. For each sample, every next token ŷ_t is drawn from the model's own prediction
p_φ(·|z_<t) (teacher-forced on z). ℓ averages T independent next-token predictions, so its
curvature (Fisher = Gauss-Newton Hessian) is (1/T) Σ_t F_t, while the sampled gradient of the
mean has E ‖∇ℓ(ŷ)‖² = (1/T²) Σ_t tr F_t: the estimate is T · mean over samples of ‖∇ℓ(ŷ)‖²
(exact LoRA gradient). Without the factor T it would rank texts by 1/length: on the benchmark the
unscaled version picked texts of 21–34 characters against 53–87 for the adaptation sets.

The model is any local checkpoint directory `AutoModelForCausalLM` and `AutoTokenizer` load with
`local_files_only=True`; nothing is downloaded. The device is CUDA when present, else the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from albat.pipeline.options import defaults
from albat.pipeline.progress import tracked_range, tracked_slices
from albat.pipeline.surrogates.base import State, Surrogate, holdout_split, row_slices
from albat.pipeline.surrogates.options import SURROGATE_OPTIONS
from albat.stores.errors import AlbatError

DEFAULT = defaults(SURROGATE_OPTIONS)  # the options' defaults are declared once, in pipeline.surrogates.options

EVAL_EVERY = 10  # surrogate steps between held-out evaluations


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_causal_lm(path: str | Path, device: str = "auto"):
    """(model, tokenizer) from a local checkpoint directory, frozen, in eval mode, float32."""
    path = Path(path)
    if not str(path) or not (path / "config.json").is_file():
        raise AlbatError(f"surrogate lm: '{path}' is not a local Hugging Face checkpoint directory (no config.json); "
                         "pass model=DIR holding config.json, the weights and the tokenizer (nothing is downloaded)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.to(resolve_device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def attach_lora(model, rank: int, alpha: float, target_modules: list[str] | None, seed: int):
    """Wrap `model` in a seeded peft LoRA adapter (no dropout, so losses are deterministic)."""
    import torch
    from peft import LoraConfig, get_peft_model

    import warnings

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=target_modules or None)
    try:
        with warnings.catch_warnings():  # transformers 5 deprecation noise from inside peft
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise AlbatError(f"surrogate lm: peft cannot place LoRA on this model ({exc}); "
                         "name its linear layers with target_modules=q_proj,v_proj") from None


def lora_parameters(model) -> dict[str, Any]:
    """The trainable LoRA tensors by name, in a fixed (sorted) order."""
    return dict(sorted((n, p) for n, p in model.named_parameters() if p.requires_grad))


@dataclass
class Tokens:
    """Right-padded token ids of n texts, each starting with BOS (or EOS, GPT-style)."""

    ids: Any  # torch.LongTensor (n, L)
    mask: Any  # torch.LongTensor (n, L)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows) -> "Tokens":
        import torch

        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return Tokens(self.ids[rows], self.mask[rows])

    def batch(self, rows: slice, device: str) -> tuple[Any, Any]:
        """One batch on `device`, trimmed to its longest row."""
        mask = self.mask[rows]
        width = max(int(mask.sum(1).max()), 1) if len(mask) else 1
        return self.ids[rows, :width].to(device), mask[:, :width].to(device)


def tokenize(tokenizer, texts: list[str], max_length: int) -> Tokens:
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise AlbatError("surrogate lm: the tokenizer has neither a BOS nor an EOS token to start a text with")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    rows = [[start] + tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 1] for t in texts]
    width = max([len(r) for r in rows] + [1])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return Tokens(ids, mask)


def token_nll(model, ids, mask, targets=None):
    """Per-example mean next-token NLL, shape (n,); `targets` replaces the next tokens (Fisher labels)."""
    return nll_from_logits(model(input_ids=ids, attention_mask=mask).logits, ids, mask, targets)


def nll_from_logits(logits, ids, mask, targets=None):
    """`token_nll` on logits already computed (n, L, V)."""
    import torch.nn.functional as F

    logits = logits[:, :-1]
    labels = (ids if targets is None else targets)[:, 1:]
    weight = mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none") * weight
    return nll.sum(1) / weight.sum(1).clamp(min=1.0)


class _Capture:
    """Forward hooks on the LoRA factors: keep each one's input and output for per-example gradients."""

    def __init__(self, model, names: list[str]):
        modules = dict(model.named_modules())
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.hooks = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name], self.outputs[name] = args[0].detach(), output
        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


class LmSurrogate(Surrogate):
    name = "lm"

    def __init__(self, model_path: str | Path, *, max_length: int = DEFAULT["max_length"],
                 lora_rank: int = DEFAULT["lora_rank"], lora_alpha: float = DEFAULT["lora_alpha"],
                 target_modules: list[str] | None = None, steps: int = DEFAULT["steps"], lr: float = DEFAULT["lr"],
                 batch_size: int = DEFAULT["batch_size"], holdout_fraction: float = DEFAULT["holdout_fraction"],
                 projection_dim: int | None = DEFAULT["projection_dim"], projection_seed: int = 0,
                 device: str = DEFAULT["device"], seed: int = 0, projection_cache_bytes: int = 256 << 20):
        import torch

        self.device = resolve_device(device)
        backbone, self.tokenizer = load_causal_lm(model_path, self.device)
        self.model = attach_lora(backbone, lora_rank, lora_alpha, target_modules, seed)
        self.model.eval()
        self.params = lora_parameters(self.model)
        self._numels = [p.numel() for p in self.params.values()]
        # parameter "…lora_A.default.weight" -> module "…lora_A.default"
        self.modules = [n.rsplit(".", 1)[0] for n in self.params]
        self.max_length, self.steps, self.lr, self.batch_size = max_length, steps, lr, batch_size
        self.holdout_fraction = holdout_fraction
        self.projection_dim, self.projection_seed = projection_dim or None, projection_seed
        self.projection_cache_bytes = projection_cache_bytes
        self._blocks: dict[int, Any] = {}
        self.state = {"initial": {n: p.detach().clone() for n, p in self.params.items()}}
        self.state["adapted"] = self.state["initial"]
        self._loaded: State | None = "initial"
        torch.manual_seed(seed)

    # -- examples ---------------------------------------------------------------------------------
    def examples(self, texts: list[str]) -> Tokens:
        return tokenize(self.tokenizer, texts, self.max_length)

    def _use(self, state: State) -> None:
        import torch

        if self._loaded != state:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.state[state][n])
            self._loaded = state

    # -- training ---------------------------------------------------------------------------------
    def fit(self, adaptation: Tokens, seed: int) -> dict[str, Any]:
        """AdamW on the mean adaptation loss; keep the LoRA state with the lowest held-out loss."""
        import torch

        rng = np.random.default_rng(seed)
        held, rest = holdout_split(len(adaptation), self.holdout_fraction, rng)
        n_hold = len(held)
        holdout, train = adaptation.take(held), adaptation.take(rest)
        self._use("initial")
        opt = torch.optim.AdamW(self.params.values(), lr=self.lr, weight_decay=0.0)
        best = (math.inf, self.state["initial"], 0)
        first = None
        for step in tracked_range(self.steps + 1, "lm surrogate: fit"):
            if n_hold and step % EVAL_EVERY == 0:
                held = float(self._loss_rows(holdout).mean())
                first = held if first is None else first
                if held < best[0]:
                    best = (held, {n: p.detach().clone() for n, p in self.params.items()}, step)
            if step == self.steps:
                break
            rows = rng.choice(len(train), size=min(self.batch_size, len(train)), replace=False)
            ids, mask = train.take(np.sort(rows)).batch(slice(None), self.device)
            loss = token_nll(self.model, ids, mask).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.state["adapted"] = best[1] if n_hold else {n: p.detach().clone() for n, p in self.params.items()}
        self._loaded = None
        report: dict[str, Any] = {"steps": self.steps, "holdout_texts": n_hold,
                                  "lora_parameters": int(sum(self._numels))}
        if n_hold:
            report.update(best_step=best[2], holdout_loss=round(best[0], 5), holdout_loss_at_init=round(first, 5))
        return report

    # -- scoring ----------------------------------------------------------------------------------
    def _loss_rows(self, examples: Tokens) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for rows in tracked_slices(row_slices(len(examples), self.batch_size), len(examples), "lm surrogate: losses"):
                out.append(token_nll(self.model, *examples.batch(rows, self.device)).double().cpu())
        return torch.cat(out).numpy() if out else np.empty(0)

    def losses(self, examples: Tokens, state: State) -> np.ndarray:
        self._use(state)
        return self._loss_rows(examples)

    def unit_counts(self, examples: Tokens) -> np.ndarray:
        """Predicted tokens per example (every token after the leading BOS): what `token_nll` averages over."""
        return np.maximum(examples.mask.sum(1).numpy() - 1, 1).astype(np.float64) if len(examples) else np.empty(0)

    def unit_log_likelihoods(self, examples: Tokens, state: State) -> np.ndarray:
        """log p(token | prefix) of every predicted token of every example, flat: the MDE units."""
        import torch
        import torch.nn.functional as F

        self._use(state)
        out = []
        with torch.no_grad():
            for rows in row_slices(len(examples), self.batch_size):
                ids, mask = examples.batch(rows, self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
                nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                out.append((-nll)[mask[:, 1:].bool()].double().cpu())
        return torch.cat(out).numpy() if out else np.empty(0)

    def _per_example_grads(self, ids, mask, labels: Callable[[Any], Any] | None = None) -> list[Any]:
        """Exact per-example gradients of ℓ, one (b, out, in) tensor per LoRA factor, in `params` order.

        `labels` maps the (detached) logits of this same forward pass to replacement next tokens
        (the Fisher's sampled labels), so sampling costs no second forward."""
        import torch

        capture = _Capture(self.model, self.modules)
        try:
            with torch.enable_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                targets = None if labels is None else labels(logits.detach())
                total = nll_from_logits(logits, ids, mask, targets).sum()
                outs = [capture.outputs[m] for m in self.modules]
                deltas = torch.autograd.grad(total, outs)
            return [torch.einsum("bto,bti->boi", d, capture.inputs[m]) for d, m in zip(deltas, self.modules)]
        finally:
            capture.close()

    def _block(self, index: int):
        """Rows of R for LoRA factor `index`: seeded by (projection_seed, index), cached within a byte budget."""
        import torch

        if index in self._blocks:
            return self._blocks[index]
        numel = self._numels[index]
        gen = torch.Generator().manual_seed(self.projection_seed * 1_000_003 + index)
        block = (torch.randn(numel, self.projection_dim, generator=gen) / math.sqrt(self.projection_dim)).to(self.device)
        cached = sum(b.numel() * 4 for b in self._blocks.values())
        if cached + block.numel() * 4 <= self.projection_cache_bytes:
            self._blocks[index] = block
        return block

    def _flatten(self, grads: list[Any]):
        """(b, P) exact flattened gradients, or (b, k) projected ones."""
        import torch

        if self.projection_dim is None:
            return torch.cat([g.reshape(len(g), -1) for g in grads], 1)
        return sum(g.reshape(len(g), -1) @ self._block(i) for i, g in enumerate(grads))

    @property
    def grad_dim(self) -> int:
        return self.projection_dim or int(sum(self._numels))

    def gradients(self, examples: Tokens, state: State) -> np.ndarray:
        import torch

        self._use(state)
        out = [self._flatten(self._per_example_grads(*examples.batch(rows, self.device))).detach().float().cpu()
               for rows in tracked_slices(row_slices(len(examples), self.batch_size), len(examples),
                                          "lm surrogate: gradients")]
        return torch.cat(out).numpy() if out else np.empty((0, self.grad_dim), np.float32)

    def fisher_trace(self, examples: Tokens, state: State, samples: int = 2, seed: int = 0,
                     direction: np.ndarray | None = None) -> np.ndarray:
        import torch

        self._use(state)
        samples = max(1, samples)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        u = None if direction is None else torch.as_tensor(direction, dtype=torch.float32, device=self.device)
        out = []
        for rows in tracked_slices(row_slices(len(examples), self.batch_size, samples), len(examples),
                                   "lm surrogate: curvature"):
            ids, mask = examples.batch(rows, self.device)
            ids, mask = ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)

            def sampled(logits, ids=ids):
                probs = torch.softmax(logits.float(), -1)
                drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).reshape(ids.shape)
                return torch.cat([ids[:, :1], drawn[:, :-1]], 1)  # ŷ_t ~ p(·|z_<t) predicts position t

            grads = self._per_example_grads(ids, mask, sampled)
            if u is None:
                norms = sum(g.pow(2).sum((1, 2)) for g in grads)
            else:
                norms = (self._flatten(grads) @ u).pow(2)
            predicted = mask[:, 1:].sum(1).clamp(min=1).double()  # T, the predictions ℓ averages
            out.append((predicted * norms.double()).reshape(-1, samples).mean(1).cpu())
        return torch.cat(out).numpy() if out else np.empty(0)

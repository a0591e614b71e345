"""A causal LM cut in two: the frozen bottom layers run once per text, LoRA trains on the top `k`.

A decoder's layer l sees only h_l, the output of the layers below it. When LoRA adapts only the top k
of L layers, h_{L−k} of a text never changes while it trains, so it is computed once and cached, and
every training step runs the top k layers and the head alone (`auto`'s `judge_layers`):

    logits(text) = head(norm(layer_{L−1} ∘ … ∘ layer_{L−k}(h_{L−k}(text))))

The backward pass stops at layer L−k as well. Measured (BENCHMARKS.md `judge-cut`, one run): on the
benchmark's 4-layer LM with a 4,096-token vocabulary, k = 1 makes a step 2.3x cheaper (the head is most of
what is left); on a 24-layer Llama of hidden size 1,024 with 32,000 tokens, k = 3 makes it 5.9x cheaper.

`top_model` copies the embedding, the top k layers, the final norm and the head (the bottom layers are
left out, not copied), then checks on two texts that `inputs_embeds = h_{L−k}` reproduces the full
model's logits: an architecture that rescales `inputs_embeds` or keeps state between layers fails
that check with an error naming `judge_layers=0`, the exact full-model fit.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from albat.stores.errors import AlbatError

CHECK_TOLERANCE = 1e-3  # max |Δ logit| between the cut model and the full one on the check texts


class _Stop(Exception):
    """Raised by the pre-hook once layer L−k's input is captured: nothing above it needs to run."""


def decoder_layers(model) -> Any:
    """The decoder's layer list (`model.model.layers` in Llama, Mistral, Qwen, Gemma...)."""
    layers = getattr(_owner(model), "layers", None)
    if layers is None or not len(layers):
        raise AlbatError(f"method auto: judge_layers needs a decoder whose layers are `model.layers` "
                         f"({type(model).__name__} has none); use judge_layers=0 (the full-model fit)")
    return layers


def _owner(model):
    return getattr(model, "base_model", model)


def top_model(model, k: int):
    """A copy of `model` whose decoder keeps only its top k layers (the weights are copied, so the
    original keeps working); it takes `inputs_embeds` = the cached input of layer L−k."""
    layers = decoder_layers(model)
    if not 1 <= k < len(layers):
        raise AlbatError(f"method auto: judge_layers={k}: the model has {len(layers)} decoder layers; choose "
                         f"judge_layers=1 to {len(layers) - 1}, or judge_layers=0 (the full-model fit)")
    owner = _owner(model)
    keep, owner.layers = owner.layers, type(layers)(list(layers)[len(layers) - k:])
    try:
        top = copy.deepcopy(model)  # copies embedding (tied head), top layers, norm, head: not the bottom ones
    finally:
        owner.layers = keep
    top.eval()
    return top


def bottom_states(model, k: int, ids, mask):
    """The input of layer L−k for a batch of token ids (n, T, d): the full model run up to that layer."""
    import torch

    layers = decoder_layers(model)
    captured: dict[str, Any] = {}

    def hook(module, args, kwargs):
        captured["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = layers[len(layers) - k].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "h" not in captured:
        raise AlbatError("method auto: judge_layers: the model never ran its decoder layers; use judge_layers=0")
    return captured["h"].detach()


def top_logits(top, states, mask):
    """Logits of the cut model on cached layer inputs (n, T, d)."""
    return top(inputs_embeds=states, attention_mask=mask, use_cache=False).logits


def check_cut(model, top, k: int, ids, mask) -> float:
    """max |Δ logit| on real tokens between the full model and the cut one; an error if it exceeds
    CHECK_TOLERANCE (the architecture does something between layers that a cut cannot reproduce)."""
    import torch

    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        cut = top_logits(top, bottom_states(model, k, ids, mask), mask)
    real = mask.bool()
    gap = float((full[real] - cut[real]).abs().max())
    if not np.isfinite(gap) or gap > CHECK_TOLERANCE:
        raise AlbatError(f"method auto: judge_layers={k}: {type(model).__name__} cut above layer {len(decoder_layers(model)) - k} "
                         f"does not reproduce the full model (max logit gap {gap:.3g}); use judge_layers=0")
    return gap


class StateCache:
    """Layer L−k inputs of texts, computed once per key (trimmed to each text's tokens) and padded
    back to a batch's width on demand."""

    def __init__(self, model, tokenizer, k: int, max_length: int, batch_size: int = 32):
        self.model, self.tokenizer, self.k = model, tokenizer, k
        self.max_length, self.batch_size = max_length, batch_size
        self.states: dict[Any, Any] = {}

    def fill(self, keys: list[Any], texts: list[str]) -> None:
        """Compute the states of the `keys` not cached yet (texts[i] is keys[i]'s text); only those texts
        are tokenized and run."""
        from albat.pipeline.surrogates.lm import tokenize

        device = next(self.model.parameters()).device
        todo = [i for i, key in enumerate(keys) if key not in self.states]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start: start + self.batch_size]
            ids, mask = tokenize(self.tokenizer, [texts[i] for i in rows], self.max_length).batch(slice(None), device)
            states = bottom_states(self.model, self.k, ids, mask)
            for j, row in enumerate(rows):
                self.states[keys[row]] = states[j, : int(mask[j].sum())].clone()

    def batch(self, keys: list[Any], width: int):
        """(n, width, d): the keys' cached states, zero-padded on the right (padding is masked)."""
        import torch

        first = self.states[keys[0]]
        out = torch.zeros((len(keys), width, first.shape[-1]), dtype=first.dtype, device=first.device)
        for j, key in enumerate(keys):
            h = self.states[key][:width]
            out[j, : len(h)] = h
        return out

"""A tiny, randomly initialised causal LM saved as a local checkpoint, so `lm` tests run in seconds
and never touch a hub."""
from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the oak is a tree with lobed leaves", "a fern is a plant without flowers",
    "the compiler translates source code", "a kernel schedules processes on a cpu",
    "the heron is a wading bird", "a byte holds eight bits", "roses have thorns and petals",
    "the parser builds a syntax tree", "a wolf hunts in packs", "moss grows on damp stones",
]


def make_tiny_lm(root: Path, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """Train a word-level tokenizer on SENTENCES and save a random Llama with it; return the dir."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(root) / f"tiny-lm-{layers}x{hidden}-s{seed}"
    if (out / "config.json").exists():
        return out
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

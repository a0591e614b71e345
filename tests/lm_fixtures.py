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


def tiny_config(arch: str, vocab: int, hidden: int = 32, layers: int = 2):
    """A tiny config of another decoder family (the names transformers gives them), sharing the
    tokenizer of `make_tiny_lm`: gpt2, gpt_neox, opt, qwen2, mistral, phi, gemma, bloom, falcon, gptj."""
    import transformers as T

    ids = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    heads = dict(num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64)
    return {
        "gpt2": lambda: T.GPT2Config(n_embd=hidden, n_layer=layers, n_head=2, n_positions=64, **ids),
        "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, **heads, **ids),
        "opt": lambda: T.OPTConfig(hidden_size=hidden, ffn_dim=2 * hidden, word_embed_proj_dim=hidden, **heads, **ids),
        "qwen2": lambda: T.Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=2,
                                       **heads, **ids),
        "mistral": lambda: T.MistralConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=1,
                                           **heads, **ids),
        "phi": lambda: T.PhiConfig(hidden_size=hidden, intermediate_size=2 * hidden, **heads, **ids),
        "gemma": lambda: T.GemmaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_key_value_heads=1,
                                       head_dim=hidden // 2, **heads, **ids),
        "bloom": lambda: T.BloomConfig(hidden_size=hidden, n_layer=layers, n_head=2, **ids),
        "falcon": lambda: T.FalconConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, **ids),
        "gptj": lambda: T.GPTJConfig(n_embd=hidden, n_layer=layers, n_head=2, n_positions=64, rotary_dim=8, **ids),
    }[arch]()


def make_tiny_arch(root: Path, arch: str, seed: int = 0) -> Path:
    """A random checkpoint of decoder family `arch` (`tiny_config`) with `make_tiny_lm`'s tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(root) / f"tiny-{arch}-s{seed}"
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(make_tiny_lm(root), local_files_only=True)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

"""Tiny random-weight HuggingFace models for the hydrogen_ops.hf tests (no downloads)."""

from __future__ import annotations

import torch

COMMON = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # Larger than the usual 0.02 so that random logits are decisive: greedy search then has
    # no near-ties that fp rounding differences could flip.
    initializer_range=0.2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def make_config(family: str, **overrides):
    import transformers as tf

    kw = dict(COMMON)
    if family == "llama":
        cls = tf.LlamaConfig
    elif family == "mistral":
        cls = tf.MistralConfig
        kw["sliding_window"] = 4096
    elif family == "qwen2":
        cls = tf.Qwen2Config
    elif family == "qwen3":
        cls = tf.Qwen3Config
        kw["head_dim"] = 16
    elif family == "gemma2":
        cls = tf.Gemma2Config
        kw.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
    else:
        raise ValueError(family)
    kw.update(overrides)
    return cls(**kw)


def make_model(family: str, seed: int = 0, dtype=torch.float32, attn_implementation: str = "sdpa", **overrides):
    import transformers as tf

    cfg = make_config(family, **overrides)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    return model.to(dtype).eval()


def random_ids(n: int, seed: int, vocab: int = COMMON["vocab_size"]) -> list:
    g = torch.Generator().manual_seed(seed)
    # avoid pad/bos/eos ids inside prompts
    return torch.randint(3, vocab, (n,), generator=g).tolist()

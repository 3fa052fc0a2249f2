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

# The families most tests run on.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")

# Per-family settings on top of COMMON (what a tiny config of that family needs).
FAMILY_OVERRIDES = {
    "llama": {},
    "mistral": dict(sliding_window=4096),
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "phi3": {},
    "granite": {},
    "olmo": {},
    "olmo2": {},
    "gemma": dict(head_dim=16),
    "gpt_neox": dict(rotary_pct=0.5),
    "starcoder2": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "glm4": dict(head_dim=16),
    "cohere2": dict(head_dim=16, sliding_window=4096),
    "cohere": {},
    "phi": {},
    "glm": dict(head_dim=16),
    "helium": dict(head_dim=16),
    "olmo3": dict(sliding_window=4096),
    "smollm3": {},
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "exaone4": dict(head_dim=16, sliding_window=4096),
    "seed_oss": dict(head_dim=16),
    "arcee": {},
    "ernie4_5": dict(head_dim=16),
    "apertus": {},
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64),
}


def make_config(family: str, **overrides):
    import transformers as tf

    if family not in FAMILY_OVERRIDES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILY_OVERRIDES)}")
    kw = dict(COMMON)
    kw.update(FAMILY_OVERRIDES[family])
    kw.update(overrides)
    return tf.AutoConfig.for_model(family, **kw)


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


def left_padded(rows, pad: int = 0):
    """``(input_ids, attention_mask)`` of token rows, left-padded as a tokenizer gives them."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask

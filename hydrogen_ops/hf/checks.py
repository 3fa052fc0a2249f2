"""What a model must satisfy for hydrogen attention, judged by the features that change the
math (not by family name).

Two kinds of answers:

* :func:`unsupported_reason`: hydrogen attention cannot stand in for the model's attention at
  all (softcapping, attention sinks, attention not dispatched through ``AttentionInterface``,
  non-causal models). :func:`hydrogen_ops.hf.enable` refuses these.
* :func:`sharing_blocker`: the model runs with hydrogen attention (exact stock ``sdpa``
  attention), but sharing a prefix would change the result for this call (a sliding window
  shorter than the sequence, RoPE whose frequencies depend on the sequence length). Stock
  attention then runs.
"""

from __future__ import annotations

from typing import Optional

# Model families whose tiny random-weight configs the test suite runs, greedy tokens equal
# to stock (sharing on). Informational: support is decided by the checks below.
SUPPORTED_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo2", "gemma", "gpt_neox",
        "starcoder2", "mixtral", "qwen2_moe", "qwen3_moe", "glm4", "cohere2", "olmo", "cohere", "phi",
        "glm", "helium", "olmo3", "smollm3", "granitemoe", "exaone4", "seed_oss", "arcee", "ernie4_5", "apertus",
    }
)

# RoPE variants whose frequencies depend on the length of the sequence being processed.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class HydrogenUnsupportedError(NotImplementedError):
    """A feature that the hydrogen HF integration does not support (it never guesses)."""


def text_config(config):
    try:
        return config.get_text_config(decoder=True)
    except (AttributeError, TypeError):
        return config


def unsupported_reason(model) -> Optional[str]:
    """Why hydrogen attention cannot replace ``model``'s attention, or None."""
    config = text_config(model.config)
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_causal", True):
        return f"model_type={model_type!r} is not a causal decoder-only model"
    for attr in ("attn_logit_softcapping", "attention_logit_softcapping"):
        if getattr(config, attr, None) is not None:
            return f"model_type={model_type!r} uses attention-logit softcapping ({attr})"
    if any(hasattr(module, "sinks") or hasattr(module, "s_aux") for module in model.modules()):
        return f"model_type={model_type!r} uses attention sinks"
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface"
    return None


def _rope_types(config):
    for attr in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attr, None)
        if isinstance(params, dict):
            # either one {"rope_type": ...} or one such dict per layer type
            nested = [v for v in params.values() if isinstance(v, dict)]
            for p in nested or [params]:
                rope_type = p.get("rope_type", p.get("type"))
                if rope_type is not None:
                    yield rope_type


def sliding_windows(config):
    """The sliding-window sizes the model's layers use (empty when all layers are full)."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return []
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return []
    if getattr(config, "use_sliding_window", True) is False:
        return []
    return [int(window)]


def sharing_blocker(model, max_tokens: int) -> Optional[str]:
    """Why sharing a prefix could change results for sequences of up to ``max_tokens``, or None."""
    config = text_config(model.config)
    for rope_type in _rope_types(config):
        if rope_type in _LENGTH_DEPENDENT_ROPE:
            return f"its RoPE ({rope_type!r}) depends on the sequence length"
    for window in sliding_windows(config):
        if max_tokens >= window:  # conservative about whether the window counts the query itself
            return f"its sliding window ({window}) is shorter than the sequence ({max_tokens} tokens)"
    return None

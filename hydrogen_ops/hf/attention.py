"""The ``"hydrogen"`` attention implementation, and switching a model to it.

Registered with transformers' ``AttentionInterface`` (and a mask function with
``AttentionMaskInterface``) at import, so ``model.set_attn_implementation("hydrogen")`` and
``from_pretrained(..., attn_implementation="hydrogen")`` work as well as :func:`enable`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hydrogen_ops as _ops

from .cache import ATTN_IMPLEMENTATION, CACHE_KWARG, SharedPrefixCache
from .checks import HydrogenUnsupportedError, unsupported_reason

logger = logging.getLogger("hydrogen_ops.hf")
_logged = set()


def log_once(message: str) -> None:
    """Log ``message`` (a warning) the first time it comes up in this process."""
    if message not in _logged:
        _logged.add(message)
        logger.warning(message)


def hydrogen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
):
    """The ``"hydrogen"`` attention function.

    With a :class:`SharedPrefixCache` in the ``hydrogen_cache`` kwarg, attention runs through
    :func:`hydrogen_ops.hydragen_attention` over the cache's shared levels and per-sequence
    segment (the 4D mask is not needed: the cache knows every row's keys). Otherwise it is
    transformers' stock ``sdpa`` attention, exactly.
    """
    cache: Optional[SharedPrefixCache] = kwargs.pop(CACHE_KWARG, None)
    if kwargs.get("softcap") is not None:
        raise HydrogenUnsupportedError(
            "hydrogen attention does not support attention-logit softcapping (e.g. Gemma2); "
            "use attn_implementation='eager'."
        )
    if kwargs.get("s_aux") is not None:
        raise HydrogenUnsupportedError("hydrogen attention does not support attention sinks (s_aux).")
    if cache is None:
        if attention_mask is not None and attention_mask.shape[-1] != key.shape[-2]:
            raise RuntimeError(
                f"hydrogen attention: the mask covers {attention_mask.shape[-1]} keys but got {key.shape[-2]}. "
                f"If this model call uses a SharedPrefixCache, pass {CACHE_KWARG}=cache along with it "
                "(model.generate() does so by itself)."
            )
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if dropout and module.training:
        raise HydrogenUnsupportedError("hydrogen attention is inference-only: attention dropout is not supported.")
    if kwargs.get("output_attentions", False):
        log_once(
            "hydrogen attention does not return attention weights (output_attentions=True), like `sdpa`; "
            "use attn_implementation='eager' for them."
        )
    layer = cache.layers[module.layer_idx]
    cache.attention_done()
    out = _ops.hydragen_attention(
        query,
        [level.as_op_args() for level in layer.levels],
        (layer.keys, layer.values, layer.lens),
        causal=True,
        scale=scaling,
    )
    return out.transpose(1, 2), None


def hydrogen_mask(*args, **kwargs):
    """Mask function for ``"hydrogen"``: stock sdpa's (the shared path does not read it)."""
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    AttentionInterface.register(ATTN_IMPLEMENTATION, hydrogen_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, hydrogen_mask)


# --------------------------------------------------------------------------------------------
# enable / disable
# --------------------------------------------------------------------------------------------


def is_enabled(model) -> bool:
    return model.config._attn_implementation == ATTN_IMPLEMENTATION


def enable(model):
    """Switch ``model`` to ``attn_implementation="hydrogen"``; remembers what was there.

    Refuses (:class:`HydrogenUnsupportedError`) models whose attention hydrogen cannot compute:
    attention-logit softcapping, attention sinks, attention outside ``AttentionInterface``.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise HydrogenUnsupportedError(f"hydrogen attention cannot replace this model's attention: {reason}.")
    register()
    if is_enabled(model):
        return model
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if not is_enabled(model):
        model.set_attn_implementation(previous)
        raise HydrogenUnsupportedError(
            f"{type(model).__name__} does not dispatch attention through transformers' AttentionInterface."
        )
    model._hydrogen_previous_attn = previous
    return model


def disable(model):
    """Restore the attention implementation that was active before :func:`enable`."""
    if not is_enabled(model):
        return model
    previous = getattr(model, "_hydrogen_previous_attn", None) or "sdpa"
    model.set_attn_implementation(previous)
    if hasattr(model, "_hydrogen_previous_attn"):
        del model._hydrogen_previous_attn
    return model


@contextlib.contextmanager
def enabled(model):
    """Context manager: hydrogen attention inside, previous implementation restored on exit."""
    was_enabled = is_enabled(model)
    enable(model)
    try:
        yield model
    finally:
        if not was_enabled:
            disable(model)

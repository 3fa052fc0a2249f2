"""Typed wrappers over ``torch.ops.hydrogen``: the three single ops, their paged forms and
the fused ``hydragen_attention``.

The ops' fake (meta) kernels are registered in C++ (csrc/attention_meta.cpp) and apply the
same shape rules as the device kernels, so torch.compile refuses bad input at trace time."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from hydrogen_ops import _C  # noqa: F401  (loads the library that registers torch.ops.hydrogen)

__all__ = [
    "prefix_attention",
    "suffix_attention",
    "merge_attention",
    "hydragen_attention",
    "paged_prefix_attention",
    "paged_suffix_attention",
]

Tensor = torch.Tensor
PrefixLevel = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]
SuffixSegment = Tuple[Tensor, Tensor, Optional[Tensor]]


def prefix_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_lens: Optional[Tensor] = None,
    seq_to_prefix: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """Non-causal attention of every query over its sequence's shared prefix.

    Args:
        q: ``[B, Hq, Lq, D]`` queries.
        k, v: ``[P, Hkv, Lp, D]``: P shared prefixes, right-padded to Lp. ``Hq % Hkv == 0``.
        kv_lens: int ``[P]``, valid length of each prefix (None: all Lp).
        seq_to_prefix: int ``[B]``, the prefix each sequence reads (None requires P == 1).
        scale: score scale, default ``1/sqrt(D)``.
        out_dtype: dtype of ``out`` (default q's); float32 keeps partials exact for a merge.

    All queries mapped to one prefix, and all query heads of a GQA group, are stacked
    into one matrix so each prefix K/V tile is read once for the whole batch.
    Returns ``(out [B, Hq, Lq, D], lse [B, Hq, Lq] float32)``.
    """
    return torch.ops.hydrogen.prefix_attention(q, k, v, kv_lens, seq_to_prefix, scale, out_dtype)


def suffix_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_lens: Optional[Tensor] = None,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """Per-sequence attention over each sequence's own keys.

    Args:
        q: ``[B, Hq, Lq, D]``; k, v: ``[B, Hkv, Ls, D]``, right-padded.
        kv_lens: int ``[B]``, valid keys of each sequence (None: all Ls).
        causal: bottom-right aligned: query i of sequence b sees keys
            ``j <= kv_lens[b] - Lq + i``. Lq = 1 is decode; Lq > 1 is suffix prefill or
            multi-token decode.
    Returns ``(out [B, Hq, Lq, D], lse [B, Hq, Lq] float32)``.
    """
    return torch.ops.hydrogen.suffix_attention(q, k, v, kv_lens, causal, scale, out_dtype)


def paged_prefix_attention(
    q: Tensor,
    k_pages: Tensor,
    v_pages: Tensor,
    block_table: Tensor,
    kv_lens: Tensor,
    seq_to_prefix: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """:func:`prefix_attention` over paged K/V, read in place (no gathered copy).

    Args:
        k_pages, v_pages: ``[num_blocks, block_size, Hkv, D]`` pages (the layout of
            transformers' ``PagedAttentionCache``, viewed by block).
        block_table: int ``[P, max_blocks]``: the pages of each prefix, in key order. Only
            the first ``ceil(kv_lens[p] / block_size)`` entries of a row are read.
        kv_lens: int ``[P]``, keys of each prefix.
        seq_to_prefix: as in :func:`prefix_attention`.
    CPU only for now.
    """
    return torch.ops.hydrogen.paged_prefix_attention(q, k_pages, v_pages, block_table, kv_lens, seq_to_prefix, scale, out_dtype)


def paged_suffix_attention(
    q: Tensor,
    k_pages: Tensor,
    v_pages: Tensor,
    block_table: Tensor,
    kv_lens: Tensor,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tuple[Tensor, Tensor]:
    """:func:`suffix_attention` over paged K/V: ``block_table [B, max_blocks]`` lists each
    sequence's pages, ``kv_lens [B]`` its keys. CPU only for now."""
    return torch.ops.hydrogen.paged_suffix_attention(q, k_pages, v_pages, block_table, kv_lens, causal, scale, out_dtype)


def merge_attention(
    outs: Sequence[Tensor], lses: Sequence[Tensor], *, out_dtype: Optional[torch.dtype] = None
) -> Tuple[Tensor, Tensor]:
    """Exact N-way merge of attention results over disjoint key sets.

    ``out = sum_i exp(lse_i) out_i / sum_i exp(lse_i)`` and ``lse = log sum_i exp(lse_i)``,
    computed stably in float32. Segments with ``lse = -inf`` are empty and contribute nothing;
    a row with no segment gets out 0 and lse -inf. A NaN or ``+inf`` lse is not a valid
    result and makes the row NaN (NaN in, NaN out), as does a NaN in a weighted output.
    """
    if len(outs) == 0:  # the dispatcher cannot pick a device for an empty list
        raise ValueError("merge_attention: outs must hold at least one tensor")
    return torch.ops.hydrogen.merge_attention(list(outs), list(lses), out_dtype)


def hydragen_attention(
    q: Tensor,
    prefixes: Sequence[PrefixLevel],
    suffix: Optional[SuffixSegment] = None,
    *,
    causal: bool = True,
    scale: Optional[float] = None,
    return_lse: bool = False,
):
    """Attention over ``[level 0 | level 1 | ... | suffix]`` for every sequence, exactly.

    Args:
        q: ``[B, Hq, Lq, D]``.
        prefixes: shared levels, outermost first, each ``(k, v, kv_lens, seq_to_prefix)``
            as in :func:`prefix_attention`: level 0 is typically one prefix shared by
            all, level 1 one sub-prefix per group (any fan-out), and so on.
        suffix: ``(k, v, kv_lens)`` per-sequence keys, as in :func:`suffix_attention`.
        causal: causal mask inside the suffix (prefix levels are always fully visible).

    One dispatcher call (``torch.ops.hydrogen.hydragen_attention``). A level whose
    sharing pays is computed with its keys read once for all sequences sharing it; on
    the CPU, a level that sharing would not pay for (few sequences per prefix, short
    prefix: a cost model in bytes moved) is read in one pass per sequence together with
    the suffix, with no concatenated copy. ``HYDROGEN_SHARING=always|never`` overrides the
    model. Partial results stay in float32 and are merged once, rounding to q's dtype.
    Returns ``out`` (q's dtype), or ``(out, lse)`` when ``return_lse``.
    """
    if suffix is None:
        suffix_k = suffix_v = suffix_lens = None
    else:
        suffix_k, suffix_v, suffix_lens = suffix
    out, lse = torch.ops.hydrogen.hydragen_attention(
        q,
        [level[0] for level in prefixes],
        [level[1] for level in prefixes],
        [level[2] for level in prefixes],
        [level[3] for level in prefixes],
        suffix_k,
        suffix_v,
        suffix_lens,
        causal,
        scale,
        None,
    )
    return (out, lse) if return_lse else out


def _inference_only(ctx, *grads):
    raise RuntimeError(
        "hydrogen ops are inference-only: they have no backward. Run them under torch.no_grad() "
        "or use scaled_dot_product_attention for training."
    )


def _no_context(ctx, inputs, output):
    return None


for _name in __all__:  # every public wrapper is named after its op
    torch.library.register_autograd(f"hydrogen::{_name}", _inference_only, setup_context=_no_context)

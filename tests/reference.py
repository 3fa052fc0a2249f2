"""Float64 reference attention in plain torch math, used by every kernel test."""

from __future__ import annotations

import torch


def attention_reference(q, k, v, kv_lens=None, *, causal=False, scale=None):
    """Attention of q [B, Hq, Lq, D] over per-sequence k, v [B, Hkv, L, D] in float64.

    kv_lens [B] masks right padding; causal is bottom-right aligned (query i sees keys
    j <= kv_lens[b] - Lq + i). Returns (out, lse) with out = 0 and lse = -inf for rows
    that see no key.
    """
    B, Hq, Lq, D = q.shape
    group = Hq // k.shape[1]
    L = k.shape[2]
    q64 = q.double()
    k64 = k.double().repeat_interleave(group, dim=1)
    v64 = v.double().repeat_interleave(group, dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) * (D**-0.5 if scale is None else scale)
    lens = torch.full((B,), L) if kv_lens is None else kv_lens.cpu().long()
    j = torch.arange(L)
    visible = j[None, None, :] < lens[:, None, None]
    if causal:
        i = torch.arange(Lq)
        visible = visible & (j[None, None, :] <= lens[:, None, None] - Lq + i[None, :, None])
    visible = visible[:, None].to(scores.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v64, lse


def concat_reference(q, segments, *, causal=True, scale=None):
    """Reference for hydragen_attention: builds each sequence's concatenated keys
    [level0 | level1 | ... | suffix] (valid parts only) and attends over them, with the
    causal mask only inside the suffix. segments: list of (k [B, Hkv, L, D], v, lens [B]),
    already gathered per sequence; the last one is the suffix when `causal` applies to it.
    """
    B, Hq, Lq, D = q.shape
    outs, lses = [], []
    for b in range(B):
        ks, vs = [], []
        for k, v, lens in segments:
            n = k.shape[2] if lens is None else int(lens[b])
            ks.append(k[b : b + 1, :, :n])
            vs.append(v[b : b + 1, :, :n])
        kb, vb = torch.cat(ks, dim=2), torch.cat(vs, dim=2)
        prefix_len = kb.shape[2] - ks[-1].shape[2]
        total = torch.tensor([kb.shape[2]])
        if causal:
            # Causal only inside the suffix: query i sees every prefix key and suffix keys
            # up to its own bottom-right aligned position.
            o, s = _causal_after(q[b : b + 1], kb, vb, prefix_len, scale)
        else:
            o, s = attention_reference(q[b : b + 1], kb, vb, total, causal=False, scale=scale)
        outs.append(o)
        lses.append(s)
    return torch.cat(outs), torch.cat(lses)


def _causal_after(q, k, v, prefix_len, scale):
    B, Hq, Lq, D = q.shape
    group = Hq // k.shape[1]
    L = k.shape[2]
    q64 = q.double()
    k64 = k.double().repeat_interleave(group, dim=1)
    v64 = v.double().repeat_interleave(group, dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) * (D**-0.5 if scale is None else scale)
    j = torch.arange(L)
    i = torch.arange(Lq)
    suffix_len = L - prefix_len
    visible = (j[None, :] < prefix_len) | (j[None, :] - prefix_len <= suffix_len - Lq + i[:, None])
    scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v64, lse

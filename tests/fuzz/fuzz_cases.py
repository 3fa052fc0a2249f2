"""Seeded differential fuzz of the hydrogen ops against the float64 reference.

Every case is drawn from its own seed ("<seed>:<group>:<index>"), so any failure is
reproduced by its index alone. Attention cases build 0-3 shared prefix levels (each with
its own kv-head count, prefix count, skewed or unused ``seq_to_prefix`` and ``kv_lens``
from 0 to full) and an optional causal suffix, with odd head dims, Lq 1-20, GQA 1-8 and
non-contiguous, offset and stride-0 inputs, and call ``hydragen_attention`` or one op
directly. Merge cases mix finite, -inf, huge (+-3e38) and, in the NaN group, NaN and +inf
log-sum-exps.

Precision baseline: the same computation by stock torch in the output's precision
(``scaled_dot_product_attention`` over each sequence's concatenated keys, GQA expanded,
for attention; a float32 log-sum-exp composition for merge). A case passes when the
error of ``out`` is within ``max(BASELINE_FACTOR * baseline error, one output ulp of the
largest value + ATOL)``, the LSE likewise, NaN appears exactly where the NaN contract
puts it, and rows that see no key are exactly ``out = 0, lse = -inf``.

Groups:
- ``core``: valid input, plus NaN/inf garbage where no query may look (padding past
  ``kv_lens``, prefixes no sequence reads) and NaN outputs of empty merge segments.
- ``nan_contract``: NaN in q/k/v inside the keys a row sees (the row's out and lse are
  NaN, on every path and batch size), NaN in keys hidden by the causal mask (no effect),
  NaN and +inf merge LSEs (the merged row is NaN).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hydrogen_ops as H  # noqa: E402
from conftest import ATOL, EPS  # noqa: E402
from reference import concat_reference  # noqa: E402

GROUPS = ("core", "nan_contract")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_HEAD_DIMS = (1, 2, 3, 5, 7, 8, 15, 16, 24, 31, 32, 33, 48, 63, 64, 65, 80, 96, 100, 127, 128, 129, 160, 256)
CUDA_HEAD_DIMS = (32, 64, 80, 96, 128, 256)  # the head dims the CUDA kernels support
BASELINE_FACTOR = 2.0
NAN = float("nan")
INF = float("inf")


@dataclass
class Result:
    index: int
    ok: bool
    what: str  # one line describing the case
    error: str = ""  # why it failed
    out_err: float = 0.0
    out_bound: float = 0.0
    baseline_err: float = 0.0


@dataclass
class Segment:
    """One prefix level or the suffix, as the op receives it and as each sequence sees it."""

    k: torch.Tensor
    v: torch.Tensor
    kv_lens: Optional[torch.Tensor]
    seq_to_prefix: Optional[torch.Tensor]  # None for the suffix
    rows: List[int] = field(default_factory=list)  # K/V row each sequence reads
    lens: List[int] = field(default_factory=list)  # valid keys each sequence sees
    causal: bool = False


# ----------------------------------------------------------------------------- inputs
def _randn(gen, shape, dtype, device, spread=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * spread).to(dtype).to(device)


def make_input(rng, gen, shape, dtype, device, spread=1.0, layout=None):
    """A random tensor of `shape` in one of the layouts callers pass: contiguous, a
    transposed view (HF's q), a slice with a storage offset and padded rows (a KV cache
    slice), last-dim stride != 1, or stride 0 along one dim (expand)."""
    layout = layout or rng.choice(["contiguous"] * 4 + ["transposed", "offset", "last_strided", "expand"])
    shape = list(shape)
    if layout == "transposed" and shape[1] > 1 and shape[2] > 1:
        base = _randn(gen, [shape[0], shape[2], shape[1], shape[3]], dtype, device, spread)
        return base.transpose(1, 2), layout
    if layout == "offset":
        pad_lo, pad_hi = rng.randint(1, 5), rng.randint(0, 3)
        base = _randn(gen, shape[:-1] + [shape[-1] + pad_lo + pad_hi], dtype, device, spread)
        return base[..., pad_lo : pad_lo + shape[-1]], layout
    if layout == "last_strided" and shape[-1] > 1:
        base = _randn(gen, shape[:-2] + [shape[-1], shape[-2]], dtype, device, spread)
        return base.transpose(-1, -2), layout
    if layout == "expand":
        dims = [i for i, n in enumerate(shape) if n > 1]
        if dims:
            dim = rng.choice(dims)
            one = list(shape)
            one[dim] = 1
            return _randn(gen, one, dtype, device, spread).expand(shape), layout
    return _randn(gen, shape, dtype, device, spread), "contiguous"


def make_index(rng, values, device):
    """An int32 or int64 index tensor, sometimes a strided view."""
    dtype = rng.choice([torch.int32, torch.int64])
    t = torch.tensor(values, dtype=dtype)
    if rng.random() < 0.25:
        wide = torch.zeros(2 * len(values), dtype=dtype)
        wide[::2] = t
        t = wide[::2]
    return t.to(device)


def _pick_len(rng, short=40, long=560, long_ok=True):
    r = rng.random()
    if not long_ok:
        r = min(r, 0.9)
    if r < 0.05:
        return 0
    if r < 0.85:
        return rng.randint(1, short)
    if r < 0.93:
        return rng.randint(short + 1, 256)
    return rng.randint(257, long)  # more than one 256-key tile


def _pick_lens(rng, n, full):
    """kv_lens: None (all full) or per entry 0, full, or anything between."""
    if rng.random() < 0.3:
        return None, [full] * n
    lens = [rng.choice([0, full, full, rng.randint(0, full)]) for _ in range(n)]
    return lens, lens


def _seq_to_prefix(rng, B, P):
    """Sequence -> prefix maps: all on one, skewed, uniform; some prefixes unused."""
    mode = rng.choice(["one", "skewed", "uniform", "distinct"])
    if mode == "one":
        p = rng.randrange(P)
        return [p] * B
    if mode == "skewed":
        hot = rng.randrange(P)
        return [hot if rng.random() < 0.8 else rng.randrange(P) for _ in range(B)]
    if mode == "distinct":
        return [b % P for b in range(B)]
    return [rng.randrange(P) for _ in range(B)]


def _poison(rng, t, where, value):
    """Writes `value` at random positions of `t` selected by the bool mask `where` (same
    shape as t, or broadcastable). Works on views by writing through a fresh copy."""
    mask = where.expand(t.shape) & (torch.rand(t.shape) < rng.uniform(0.002, 0.05))
    if not mask.any():
        idx = where.expand(t.shape).nonzero()
        if len(idx) == 0:
            return t
        mask = torch.zeros(t.shape, dtype=torch.bool)
        mask[tuple(idx[rng.randrange(len(idx))].tolist())] = True
    out = t.clone()
    out[mask.to(out.device)] = value
    return out


# ----------------------------------------------------------------------------- attention cases
@dataclass
class AttentionCase:
    q: torch.Tensor
    segments: List[Segment]  # prefix levels, then the suffix if any
    has_suffix: bool
    causal: bool
    scale: Optional[float]
    call: str  # hydragen | prefix | suffix
    out_dtype: Optional[torch.dtype]
    threads: int
    what: str


def make_attention_case(rng, gen, group, device, head_dims):
    dtype = rng.choice(DTYPES)
    D = rng.choice(head_dims)
    Hq = rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 24])
    group_sizes = [g for g in range(1, 9) if Hq % g == 0]
    B = rng.choice([1, 1, 2, 3, 4, 5, 7, 8, 9, 12])
    Lq = rng.choice([1] * 6 + [2, 3, 4] * 2 + list(range(5, 21)))
    while B * Hq * Lq * D > 16_000 and (B > 1 or Lq > 1):  # keeps the float64 reference cheap
        if Lq > 1:
            Lq = (Lq + 1) // 2
        else:
            B = (B + 1) // 2
    # Keys past one 256-key tile only where the rows are few enough for a cheap reference.
    long_ok = B * Hq * Lq * D <= 4096
    n_levels = rng.choice([0, 1, 1, 2, 2, 3])
    has_suffix = n_levels == 0 or rng.random() < 0.75
    causal = rng.random() < 0.85
    spread = rng.choice([0.5, 1.0, 1.0, 2.0])
    scale = None if rng.random() < 0.7 else rng.choice([0.0, -0.3, 0.05, rng.uniform(0.01, 1.5)])
    garbage = rng.random() < 0.3  # NaN/inf where no query may look
    poison = group == "nan_contract"

    q, q_layout = make_input(rng, gen, (B, Hq, Lq, D), dtype, device, spread)
    segments = []
    desc = []
    for _ in range(n_levels):
        Hkv = Hq // rng.choice(group_sizes)
        P = rng.choice([1, 1, 2, 3, 4])
        Lp = _pick_len(rng, long_ok=long_ok)
        k, k_layout = make_input(rng, gen, (P, Hkv, Lp, D), dtype, device, spread)
        v, _ = make_input(rng, gen, (P, Hkv, Lp, D), dtype, device, spread)
        lens_arg, lens = _pick_lens(rng, P, Lp)
        s2p = _seq_to_prefix(rng, B, P)
        s2p_arg = None if (P == 1 and rng.random() < 0.5) else s2p
        if garbage:
            k, v = _garbage_outside(rng, k, v, lens, set(s2p))
        segments.append(
            Segment(
                k, v, None if lens_arg is None else make_index(rng, lens_arg, device),
                None if s2p_arg is None else make_index(rng, s2p_arg, device),
                rows=s2p, lens=[lens[p] for p in s2p],
            )
        )
        desc.append(f"prefix(P={P},Hkv={Hkv},Lp={Lp},lens={lens_arg},s2p={s2p_arg},{k_layout})")
    if has_suffix:
        Hkv = Hq // rng.choice(group_sizes)
        Ls = rng.choice([0, Lq, Lq, Lq + rng.randint(1, 40), Lq + rng.randint(1, 40), rng.randint(0, 40), _pick_len(rng, long_ok=long_ok)])
        k, k_layout = make_input(rng, gen, (B, Hkv, Ls, D), dtype, device, spread)
        v, _ = make_input(rng, gen, (B, Hkv, Ls, D), dtype, device, spread)
        if rng.random() < 0.3:
            lens_arg, lens = None, [Ls] * B
        else:
            lens = [rng.choice([Ls, Ls, 0, min(Ls, Lq), max(Ls - 1, 0), rng.randint(0, Ls)]) for _ in range(B)]
            lens_arg = lens
        if garbage:
            k, v = _garbage_outside(rng, k, v, lens, set(range(B)))
        segments.append(
            Segment(
                k, v, None if lens_arg is None else make_index(rng, lens_arg, device), None,
                rows=list(range(B)), lens=lens, causal=causal,
            )
        )
        desc.append(f"suffix(Hkv={Hkv},Ls={Ls},lens={lens_arg},causal={causal},{k_layout})")

    if poison:
        q, segments = _poison_visible(rng, q, segments, Lq)

    call = "hydragen"
    out_dtype = None
    if len(segments) == 1 and rng.random() < 0.6:
        call = "suffix" if has_suffix else "prefix"
        out_dtype = rng.choice([None, None, torch.float32, rng.choice(DTYPES)])
    threads = rng.choice([1, 2, 2, 4])
    what = (
        f"{call} {str(dtype)[6:]} B={B} Hq={Hq} Lq={Lq} D={D} scale={scale} out_dtype={out_dtype} "
        f"threads={threads} q={q_layout} garbage={garbage} " + " ".join(desc)
    )
    return AttentionCase(q, segments, has_suffix, causal, scale, call, out_dtype, threads, what)


def _garbage_outside(rng, k, v, lens, used):
    """NaN/inf in K/V rows no query may read: past each entry's kv_lens, and whole
    prefixes no sequence maps to."""
    N, _, L, _ = k.shape
    hidden = torch.zeros(N, 1, L, 1, dtype=torch.bool)
    for n in range(N):
        if n not in used:
            hidden[n] = True
        else:
            hidden[n, :, lens[n] :] = True
    if not hidden.any():
        return k, v
    value = rng.choice([NAN, INF, -INF])
    return _poison(rng, k, hidden, value), _poison(rng, v, hidden, NAN)


def _poison_visible(rng, q, segments, Lq):
    """NaN in q, or in K or V of keys inside kv_lens (seen by some rows, possibly hidden
    from others by the causal mask)."""
    target = rng.choice(["q", "k", "v", "v"] if segments else ["q"])
    if target == "q":
        B, Hq, _, D = q.shape
        return _poison(rng, q, torch.ones(B, Hq, Lq, D, dtype=torch.bool), NAN), segments
    seg = rng.choice(segments)
    N, _, L, _ = seg.k.shape
    valid = torch.zeros(N, 1, L, 1, dtype=torch.bool)
    for row, n in zip(seg.rows, seg.lens):
        valid[row, :, :n] = True
    if not valid.any():
        return q, segments
    if target == "k":
        seg.k = _poison(rng, seg.k, valid, NAN)
    else:
        seg.v = _poison(rng, seg.v, valid, NAN)
    return q, segments


def _gathered(case):
    """Per-sequence K/V of every segment with kv heads expanded to Hq, as float64 with
    NaN kept, and each sequence's valid lengths: [(k [B, Hq, L, D], v, lens [B])]."""
    Hq = case.q.shape[1]
    out = []
    for seg in case.segments:
        rows = torch.tensor(seg.rows, dtype=torch.long)
        g = Hq // seg.k.shape[1]
        k = seg.k.cpu().double()[rows].repeat_interleave(g, dim=1)
        v = seg.v.cpu().double()[rows].repeat_interleave(g, dim=1)
        out.append((k, v, torch.tensor(seg.lens, dtype=torch.long)))
    return out


def _visibility(case, b):
    """Bool [Lq, L_b] over sequence b's concatenated valid keys."""
    Lq = case.q.shape[2]
    cols = []
    for seg in case.segments:
        n = seg.lens[b]
        if seg.causal and case.causal:
            i = torch.arange(Lq)[:, None]
            j = torch.arange(n)[None, :]
            cols.append(j <= n - Lq + i)
        else:
            cols.append(torch.ones(Lq, n, dtype=torch.bool))
    return torch.cat(cols, dim=1) if cols else torch.zeros(Lq, 0, dtype=torch.bool)


def expected_attention(case):
    """Float64 reference (out, lse), the NaN pattern the contract requires, the
    stock-torch baseline (SDPA out, fp32 lse) in the output's precision, and the error
    that float32 rounding of the scores alone can cause.

    That last term: a score s = scale * q.k summed in float32 is off by up to about
    sqrt(D) * eps * scale * sum|q_c k_c| (D roundings of random sign), which moves the LSE
    by as much and the output by that times max|v|; hydragen_attention also rounds each
    partial LSE to float32 before the merge (one ulp of |lse| in each weight). Stock
    torch's error on the same inputs is often smaller than this only by luck of which
    element is worst, or by a summation order with fewer roundings."""
    q64 = case.q.cpu().double()
    gathered = _gathered(case)
    B, Hq, Lq, D = case.q.shape
    clean = [(k.nan_to_num(nan=0.0), v.nan_to_num(nan=0.0), lens) for k, v, lens in gathered]
    ref_out, ref_lse = concat_reference(
        q64.nan_to_num(nan=0.0), clean, causal=case.causal and case.has_suffix, scale=case.scale
    )
    # NaN pattern: a row is NaN when NaN reaches one of its scores (q, or K of a key it
    # sees); a column is NaN when V of a key the row sees has NaN there. A row that sees
    # some key may also be NaN when V of a key its sequence holds but the causal mask
    # hides from it is NaN (as in SDPA's masked product: the kernels load that key for
    # the later rows of the tile, and 0 * NaN is NaN).
    row_nan = torch.zeros(B, Hq, Lq, dtype=torch.bool)
    col_nan = torch.zeros(B, Hq, Lq, D, dtype=torch.bool)
    may_nan = torch.zeros(B, Hq, Lq, dtype=torch.bool)
    wide = torch.float32 if (case.out_dtype or case.q.dtype) != case.q.dtype else case.q.dtype
    base_out = torch.zeros(B, Hq, Lq, D, dtype=torch.float64)
    base_lse = torch.full((B, Hq, Lq), -INF, dtype=torch.float64)
    scale = D**-0.5 if case.scale is None else case.scale
    score_abs, v_abs = 0.0, 0.0
    for b in range(B):
        vis = _visibility(case, b)  # [Lq, L]
        kb = torch.cat([k[b, :, : lens[b]] for k, _, lens in gathered], dim=1)  # [Hq, L, D]
        vb = torch.cat([v[b, :, : lens[b]] for _, v, lens in gathered], dim=1)
        sees_any = vis.any(dim=1)  # [Lq]
        knan = kb.isnan().any(-1)  # [Hq, L]
        row_nan[b] = sees_any & (q64[b].isnan().any(-1) | (vis[None] & knan[:, None, :]).any(-1))
        col_nan[b] = row_nan[b][..., None] | (vis[None, :, :, None] & vb.isnan()[:, None]).any(2)
        may_nan[b] = sees_any[None] & vb.isnan().any(-1).any(-1)[:, None]
        if kb.shape[1]:
            qa, ka = q64[b].nan_to_num(nan=0.0).abs(), kb.nan_to_num(nan=0.0).abs()
            sums = (qa @ ka.transpose(-1, -2)).masked_fill(~vis[None], 0.0)
            score_abs = max(score_abs, abs(scale) * sums.max().item())
            v_abs = max(v_abs, vb.nan_to_num(nan=0.0).abs().max().item())
        # Baseline: stock torch on the clean inputs, in the output's precision.
        if kb.shape[1] and sees_any.any():
            qb = q64[b].nan_to_num(nan=0.0).to(case.q.dtype).to(wide)
            kc = kb.nan_to_num(nan=0.0).to(case.q.dtype).to(wide)
            vc = vb.nan_to_num(nan=0.0).to(case.q.dtype).to(wide)
            o = F.scaled_dot_product_attention(qb[None], kc[None], vc[None], attn_mask=vis[None, None], scale=scale)[0]
            base_out[b] = o.to(case.out_dtype or case.q.dtype).double()
            s = (qb.float() * scale) @ kc.float().transpose(-1, -2)
            base_lse[b] = torch.logsumexp(s.masked_fill(~vis[None], -INF), dim=-1).double()
    finite_lse = ref_lse[torch.isfinite(ref_lse)]
    lse_abs = finite_lse.abs().max().item() if case.call == "hydragen" and finite_lse.numel() else 0.0
    rounding = (2.0**-23 * (score_abs + lse_abs) * v_abs, 2.0**-23 * math.sqrt(D) * score_abs)
    return ref_out, ref_lse, row_nan, col_nan, may_nan, base_out, base_lse, rounding


def run_attention(case):
    q, segs = case.q, case.segments
    if case.call == "prefix":
        s = segs[0]
        return H.prefix_attention(q, s.k, s.v, s.kv_lens, s.seq_to_prefix, scale=case.scale, out_dtype=case.out_dtype)
    if case.call == "suffix":
        s = segs[0]
        return H.suffix_attention(q, s.k, s.v, s.kv_lens, causal=case.causal, scale=case.scale, out_dtype=case.out_dtype)
    prefixes = [(s.k, s.v, s.kv_lens, s.seq_to_prefix) for s in (segs[:-1] if case.has_suffix else segs)]
    suffix = (segs[-1].k, segs[-1].v, segs[-1].kv_lens) if case.has_suffix else None
    return H.hydragen_attention(q, prefixes, suffix, causal=case.causal, scale=case.scale, return_lse=True)


# ----------------------------------------------------------------------------- merge cases
@dataclass
class MergeCase:
    outs: List[torch.Tensor]
    lses: List[torch.Tensor]
    out_dtype: Optional[torch.dtype]
    threads: int
    what: str


def make_merge_case(rng, gen, group, device, head_dims):
    dtype = rng.choice(DTYPES)
    n = rng.choice([1, 2, 2, 3, 4, 5])
    B, Hh, L = rng.randint(1, 4), rng.randint(1, 6), rng.choice([1, 1, 2, 5, 20])
    D = rng.choice(head_dims)
    shape = (B, Hh, L, D)
    # LSE value classes per element: ordinary, ties, far apart, -inf, huge finite; the
    # NaN group adds NaN and +inf.
    kinds = ["normal"] * 6 + ["tie", "far", "neginf", "neginf", "huge"]
    if group == "nan_contract":
        kinds += ["nan", "posinf"]
    lse_vals = torch.randn(n, B, Hh, L, generator=gen) * 3
    base = torch.randn(B, Hh, L, generator=gen) * 5
    for i, b, h, l in itertools.product(range(n), range(B), range(Hh), range(L)):
        kind = rng.choice(kinds)
        if kind == "normal":
            continue
        lse_vals[i, b, h, l] = {
            "tie": base[b, h, l].item(),
            "far": base[b, h, l].item() + rng.choice([-1, 1]) * rng.uniform(80, 200),
            "neginf": -INF,
            "huge": rng.choice([3e38, -3e38, 1e38, -1e38, 3.4e38]),
            "nan": NAN,
            "posinf": INF,
        }[kind]
    outs, lses, layouts = [], [], []
    for i in range(n):
        lse_layout = rng.choice(["contiguous", "contiguous", "transposed", "expand"])
        if lse_layout == "transposed":
            lse = lse_vals[i].transpose(1, 2).contiguous().transpose(1, 2)
        elif lse_layout == "expand" and L > 1:
            lse = lse_vals[i][:, :, :1].expand(B, Hh, L)
        else:
            lse_layout = "contiguous"
            lse = lse_vals[i].clone()
        o, lay = make_input(rng, gen, shape, dtype, device, rng.choice([1.0, 4.0]))
        # An empty segment's out is garbage: it must not be read.
        empty = torch.isneginf(lse)[..., None].expand(shape)
        if empty.any() and rng.random() < 0.5:
            o = o.clone()
            o[empty.to(o.device)] = NAN
        outs.append(o)
        lses.append(lse.to(device))
        layouts.append(f"{lay}/{lse_layout}")
    # NaN in the out of the segment with the largest weight (per row) must reach the result.
    if rng.random() < 0.2:
        stacked = torch.stack([s.cpu() for s in lses]).nan_to_num(nan=-INF, posinf=-INF)
        top = stacked.argmax(0)
        finite = torch.isfinite(stacked.max(0).values)
        rows = finite.nonzero()
        if len(rows):
            b, h, l = rows[rng.randrange(len(rows))].tolist()
            i = int(top[b, h, l])
            c = rng.randrange(D)
            o = outs[i].clone()
            o[b, h, l, c] = NAN
            outs[i] = o
    out_dtype = rng.choice([None, None, torch.float32, rng.choice(DTYPES)])
    threads = rng.choice([1, 2, 4])
    what = f"merge {str(dtype)[6:]} n={n} shape={shape} out_dtype={out_dtype} threads={threads} layouts={layouts}"
    return MergeCase(outs, lses, out_dtype, threads, what)


def expected_merge(case):
    """Float64 merge with the contract's NaN rules, and the float32 torch composition
    as the precision baseline."""
    lse = torch.stack([s.cpu().double() for s in case.lses])  # [n, B, H, L]
    outs = torch.stack([o.cpu().double() for o in case.outs])  # [n, B, H, L, D]
    bad = (lse.isnan() | torch.isposinf(lse)).any(0)  # NaN row by the contract
    usable = torch.where(bad[None], -INF, lse)
    # Weights relative to the largest LSE, normalised by their sum: exp(lse_i - lse) would
    # lose log(sum) next to a huge LSE (3e38 + log 2 == 3e38 even in float64).
    top = usable.max(0).values
    empty = torch.isneginf(top)
    w = torch.exp(usable - torch.where(empty, 0.0, top)[None])
    w = torch.where(torch.isneginf(usable), 0.0, w)
    total = w.sum(0)
    ref_lse = torch.where(empty, -INF, top + total.log())
    contrib = torch.where(w[..., None] > 0, w[..., None] * outs, 0.0)
    ref_out = contrib.sum(0) / torch.where(empty, 1.0, total)[..., None]
    ref_lse = torch.where(bad, NAN, ref_lse)
    row_nan = bad
    col_nan = bad[..., None] | ref_out.isnan()
    ref_out = ref_out.nan_to_num(nan=0.0)
    # Baseline: the stock float32 composition on the non-NaN rows.
    lse32 = torch.stack([s.cpu().float() for s in case.lses]).nan_to_num(nan=-INF, posinf=-INF)
    top32 = lse32.max(0).values
    w32 = torch.exp(lse32 - torch.where(torch.isneginf(top32), 0.0, top32)[None]).nan_to_num(nan=0.0)
    total32 = w32.sum(0)
    outs32 = torch.stack([o.cpu().float() for o in case.outs])
    base = torch.where(w32[..., None] > 0, w32[..., None] * outs32, 0.0).sum(0) / total32.clamp_min(1.0)[..., None]
    base_lse = top32 + total32.log()
    out_dtype = case.out_dtype or case.outs[0].dtype
    may_nan = torch.zeros_like(row_nan)
    return ref_out, ref_lse, row_nan, col_nan, may_nan, base.to(out_dtype).double(), base_lse.double(), (0.0, 0.0)


def run_merge(case):
    return H.merge_attention(case.outs, case.lses, out_dtype=case.out_dtype)


# ----------------------------------------------------------------------------- the check
def check(out, lse, ref_out, ref_lse, row_nan, col_nan, may_nan, base_out, base_lse, rounding, out_dtype):
    """Returns (error message or "", out error, out bound, baseline error).

    `rounding`: (out, lse) errors that float32 scores and LSEs alone can cause (see
    expected_attention), added to the floors of the bounds."""
    out = out.detach().cpu().double()
    lse = lse.detach().cpu().double()
    if out.shape != ref_out.shape or lse.shape != ref_lse.shape:
        return f"shape: out {tuple(out.shape)} lse {tuple(lse.shape)}, expected {tuple(ref_out.shape)}", 0, 0, 0
    # NaN exactly where the contract puts it. A V NaN poisons its column; the rest of the
    # row may be NaN too (a whole-row rule is allowed), or correct.
    got_nan = out.isnan()
    partial = col_nan & ~row_nan[..., None]
    if (col_nan & ~got_nan).any():
        idx = (col_nan & ~got_nan).nonzero()[0].tolist()
        return f"out is not NaN at {idx} where NaN reaches it", 0, 0, 0
    extra = got_nan & ~col_nan & ~partial.any(-1, keepdim=True) & ~may_nan[..., None]
    if extra.any():
        idx = extra.nonzero()[0].tolist()
        return f"out is NaN at {idx}, where no NaN reaches", 0, 0, 0
    if (row_nan & ~lse.isnan()).any():
        idx = (row_nan & ~lse.isnan()).nonzero()[0].tolist()
        return f"lse is {lse[tuple(idx)].item()} at {idx}, expected NaN", 0, 0, 0
    lse_may_nan = partial.any(-1)
    if (lse.isnan() & ~row_nan & ~lse_may_nan).any():
        idx = (lse.isnan() & ~row_nan & ~lse_may_nan).nonzero()[0].tolist()
        return f"lse is NaN at {idx}, where no NaN reaches", 0, 0, 0
    # Rows that see nothing: exactly out 0, lse -inf.
    empty = torch.isneginf(ref_lse) & ~row_nan
    if not torch.equal(torch.isneginf(lse) & ~row_nan, empty):
        idx = (torch.isneginf(lse) != empty).nonzero()[0].tolist()
        return f"lse {lse[tuple(idx)].item()} at {idx}, reference {ref_lse[tuple(idx)].item()}", 0, 0, 0
    if (out[empty] != 0).any():
        return "a row that sees no key has out != 0", 0, 0, 0
    # Values against the float64 reference, bounded by the stock baseline's own error.
    rows = ~empty & ~row_nan
    cmp = rows[..., None] & ~got_nan
    err = (out - ref_out).abs().where(cmp, 0.0)
    base_err = (base_out - ref_out).abs().where(cmp & ~base_out.isnan(), 0.0)
    out_err, b_err = (err.max().item(), base_err.max().item()) if err.numel() else (0.0, 0.0)
    largest = ref_out.abs().where(cmp, 0.0).max().item() if err.numel() else 0.0
    bound = max(BASELINE_FACTOR * b_err, EPS[out_dtype] * largest + ATOL[out_dtype] + rounding[0])
    if out_err > bound or math.isnan(out_err):
        idx = (err == err.max()).nonzero()[0].tolist()
        return (
            f"out error {out_err:.3e} at {idx} exceeds {bound:.3e} (baseline error {b_err:.3e})",
            out_err, bound, b_err,
        )
    lrows = rows & ~lse.isnan()
    if lrows.any():
        lerr = (lse - ref_lse).abs()[lrows].max().item()
        lbase = (base_lse - ref_lse).abs()[lrows & torch.isfinite(base_lse)]
        lbase = lbase.max().item() if lbase.numel() else 0.0
        lbound = max(BASELINE_FACTOR * lbase, 1e-5 + 2.0**-22 * ref_lse.abs()[lrows].max().item() + rounding[1])
        if not lerr <= lbound:
            return f"lse error {lerr:.3e} exceeds {lbound:.3e} (baseline error {lbase:.3e})", out_err, bound, b_err
    return "", out_err, bound, b_err


def case_rng(seed, group, index):
    rng = random.Random(f"{seed}:{group}:{index}")
    gen = torch.Generator().manual_seed(rng.getrandbits(63))
    return rng, gen


def run_case(seed, group, index, device="cpu"):
    torch.set_num_threads(1)
    rng, gen = case_rng(seed, group, index)
    # _poison draws its positions from torch's global generator: seed it per case too.
    torch.manual_seed(rng.getrandbits(63))
    head_dims = CUDA_HEAD_DIMS if device == "cuda" else CPU_HEAD_DIMS
    if rng.random() < 0.2:
        case = make_merge_case(rng, gen, group, device, head_dims)
        expected = expected_merge(case)
        out_dtype = case.out_dtype or case.outs[0].dtype
        runner = run_merge
    else:
        case = make_attention_case(rng, gen, group, device, head_dims)
        expected = expected_attention(case)
        out_dtype = case.out_dtype or case.q.dtype
        runner = run_attention
    try:
        torch.set_num_threads(case.threads)
        out, lse = runner(case)
    except Exception as e:  # noqa: BLE001  (every failure of the op is a finding)
        return Result(index, False, case.what, f"raised {type(e).__name__}: {e}")
    finally:
        torch.set_num_threads(1)  # the oracle's small float64 ops run fastest on one thread
    if out.dtype != out_dtype or lse.dtype != torch.float32:
        return Result(index, False, case.what, f"dtypes out {out.dtype} lse {lse.dtype}, expected {out_dtype}")
    msg, out_err, bound, b_err = check(out, lse, *expected, out_dtype)
    return Result(index, not msg, case.what, msg, out_err, bound, b_err)

"""CUDA-only tests of the hydrogen ops: agreement with a float64 reference and with the CPU
implementation, edge cases (empty/padded/out-of-range), CUDA graphs, torch.compile and
tensors with more than 2^31 elements."""

import math

import pytest
import torch

import hydrogen_ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = "cuda"
HEAD_DIMS = [32, 64, 80, 96, 128, 256]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


# ----------------------------------------------------------------------------- reference
def _rows_reference(q, k, v, visible, scale):
    """q [H, Lq, D], k/v [H, L, D] (float64), visible bool [Lq, L] -> out [H, Lq, D], lse [H, Lq]."""
    s = torch.einsum("hqd,hkd->hqk", q, k) * scale
    s = s.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(s, dim=-1) if s.shape[-1] > 0 else torch.full(s.shape[:2], float("-inf"), dtype=s.dtype)
    finite = torch.isfinite(lse)
    p = torch.where(finite[..., None], torch.exp(s - torch.where(finite, lse, 0.0)[..., None]), 0.0)
    out = torch.einsum("hqk,hkd->hqd", p, v)
    return out, lse


def _lens(kv_lens, n, L):
    if kv_lens is None:
        return [L] * n
    return [min(max(int(x), 0), L) for x in kv_lens.cpu().tolist()]


def ref_prefix(q, k, v, kv_lens=None, seq_to_prefix=None, scale=None):
    B, Hq, Lq, D = q.shape
    P, Hkv, Lp, _ = k.shape
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    lens = _lens(kv_lens, P, Lp)
    s2p = [0] * B if seq_to_prefix is None else seq_to_prefix.cpu().tolist()
    q64, k64, v64 = q.double().cpu(), k.double().cpu(), v.double().cpu()
    out = torch.zeros(B, Hq, Lq, D, dtype=torch.float64)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float64)
    for b in range(B):
        p = int(s2p[b])
        if p < 0 or p >= P:
            continue
        n = lens[p]
        kk = k64[p, :, :n].repeat_interleave(G, dim=0)
        vv = v64[p, :, :n].repeat_interleave(G, dim=0)
        visible = torch.ones(Lq, n, dtype=torch.bool)
        out[b], lse[b] = _rows_reference(q64[b], kk, vv, visible, scale)
    return out, lse


def ref_suffix(q, k, v, kv_lens=None, causal=True, scale=None):
    B, Hq, Lq, D = q.shape
    _, Hkv, Ls, _ = k.shape
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    lens = _lens(kv_lens, B, Ls)
    q64, k64, v64 = q.double().cpu(), k.double().cpu(), v.double().cpu()
    out = torch.zeros(B, Hq, Lq, D, dtype=torch.float64)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float64)
    for b in range(B):
        n = lens[b]
        kk = k64[b, :, :n].repeat_interleave(G, dim=0)
        vv = v64[b, :, :n].repeat_interleave(G, dim=0)
        i = torch.arange(Lq)[:, None]
        j = torch.arange(n)[None, :]
        visible = (j <= n - Lq + i) if causal else torch.ones(Lq, n, dtype=torch.bool)
        out[b], lse[b] = _rows_reference(q64[b], kk, vv, visible, scale)
    return out, lse


def ref_merge(outs, lses):
    """-inf lse: empty segment. Rows with a NaN or +inf lse are left out (the caller checks
    they are NaN): here they are computed as if those segments were empty."""
    l = torch.stack([x.double().cpu() for x in lses])
    l = torch.where(torch.isnan(l) | torch.isposinf(l), float("-inf"), l)
    o = torch.stack([x.double().cpu() for x in outs])
    m = l.max(dim=0).values
    finite = torch.isfinite(m)
    w = torch.where(finite[None], torch.exp(l - torch.where(finite, m, 0.0)[None]), 0.0)
    s = w.sum(0)
    o = torch.where(w[..., None] > 0, o, 0.0)  # empty segments are not read (may hold garbage)
    out = torch.where(finite[..., None], (w[..., None] * o).sum(0) / torch.where(s > 0, s, 1.0)[..., None], 0.0)
    lse = torch.where(finite, m + torch.log(torch.where(s > 0, s, 1.0)), float("-inf"))
    return out, lse


def tol(dtype):
    return {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 2.5e-2}[dtype]


def assert_close(out, lse, ref_out, ref_lse, dtype, what=""):
    torch.cuda.synchronize()
    out = out.double().cpu()
    lse = lse.double().cpu()
    assert not torch.isnan(out).any(), f"{what}: NaN in out"
    assert not torch.isnan(lse).any(), f"{what}: NaN in lse"
    ninf = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), ninf), f"{what}: -inf lse rows differ"
    assert (out[ninf] == 0).all(), f"{what}: rows with no key must be 0"
    scale = max(1.0, ref_out.abs().max().item())
    t = tol(dtype)
    torch.testing.assert_close(out, ref_out, atol=t * scale, rtol=t, msg=lambda m: f"{what} out: {m}")
    torch.testing.assert_close(
        torch.where(ninf, 0.0, lse), torch.where(ninf, 0.0, ref_lse), atol=2e-3, rtol=1e-4,
        msg=lambda m: f"{what} lse: {m}")


def rand(*shape, dtype=torch.bfloat16, gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=DEV, dtype=dtype)


# ----------------------------------------------------------------------------- prefix
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_prefix_head_dims_dtypes(dtype, D):
    torch.manual_seed(0)
    B, Hq, Hkv, Lq, Lp = 6, 8, 2, 2, 300
    q, k, v = rand(B, Hq, Lq, D, dtype=dtype), rand(1, Hkv, Lp, D, dtype=dtype), rand(1, Hkv, Lp, D, dtype=dtype)
    out, lse = hydrogen_ops.prefix_attention(q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (B, Hq, Lq)
    assert_close(out, lse, *ref_prefix(q, k, v), dtype, f"prefix D={D} {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,Hq,Hkv", [(1, 4, 4), (64, 32, 8), (64, 8, 1), (5, 32, 32), (7, 16, 2)])
@pytest.mark.parametrize("Lq", [1, 3])
def test_prefix_shapes(dtype, B, Hq, Hkv, Lq):
    torch.manual_seed(1)
    D, Lp = 128, 777
    q, k, v = rand(B, Hq, Lq, D, dtype=dtype), rand(1, Hkv, Lp, D, dtype=dtype), rand(1, Hkv, Lp, D, dtype=dtype)
    kv_lens = torch.tensor([700], device=DEV, dtype=torch.int32)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens)
    assert_close(out, lse, *ref_prefix(q, k, v, kv_lens), dtype, "prefix shapes")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_prefix_multi_uneven(dtype, index_dtype):
    torch.manual_seed(2)
    B, Hq, Hkv, Lq, D, P, Lp = 37, 8, 2, 2, 64, 4, 1100
    q = rand(B, Hq, Lq, D, dtype=dtype)
    k, v = rand(P, Hkv, Lp, D, dtype=dtype), rand(P, Hkv, Lp, D, dtype=dtype)
    kv_lens = torch.tensor([1100, 5, 0, 513], device=DEV, dtype=index_dtype)
    # prefix 0 gets most sequences, 1 unused, 2 empty, 3 a few; order shuffled.
    s2p = torch.tensor([0] * 25 + [3] * 7 + [2] * 5, dtype=index_dtype)[torch.randperm(B)].to(DEV)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens, s2p)
    assert_close(out, lse, *ref_prefix(q, k, v, kv_lens, s2p), dtype, "prefix multi")


def test_prefix_many_prefixes():
    torch.manual_seed(3)
    B, Hq, Hkv, Lq, D, P, Lp = 300, 4, 1, 1, 64, 2500, 40
    q = rand(B, Hq, Lq, D)
    k, v = rand(P, Hkv, Lp, D), rand(P, Hkv, Lp, D)
    kv_lens = torch.randint(0, Lp + 1, (P,), device=DEV)
    s2p = torch.randint(0, P, (B,), device=DEV)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens, s2p)
    assert_close(out, lse, *ref_prefix(q, k, v, kv_lens, s2p), torch.bfloat16, "prefix many")


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefix_out_of_range_values(dtype):
    """CUDA does not read kv_lens / seq_to_prefix on the host: lengths are clamped to [0, Lp]
    and a sequence with an out-of-range prefix index sees no key (out 0, lse -inf)."""
    torch.manual_seed(4)
    B, Hq, Hkv, Lq, D, P, Lp = 6, 4, 2, 1, 64, 3, 200
    q = rand(B, Hq, Lq, D, dtype=dtype)
    k, v = rand(P, Hkv, Lp, D, dtype=dtype), rand(P, Hkv, Lp, D, dtype=dtype)
    kv_lens = torch.tensor([10**12, -5, 150], device=DEV)
    s2p = torch.tensor([0, -1, 3, 2, 10**10, 1], device=DEV)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens, s2p)
    torch.cuda.synchronize()
    ref = ref_prefix(q, k, v, kv_lens, s2p)  # clamps and treats bad indices as empty
    assert_close(out, lse, *ref, dtype, "prefix out of range")
    assert torch.isneginf(lse[[1, 2, 4, 5]]).all() and (out[[1, 2, 4, 5]] == 0).all()


def test_prefix_empty_and_noncontiguous():
    torch.manual_seed(5)
    B, S, Hq, Hkv, D = 3, 2, 8, 4, 128
    x = rand(B, S, Hq, D)
    q = x.transpose(1, 2)  # [B, Hq, S, D], non-contiguous
    kk = rand(1, 50, Hkv, D).transpose(1, 2)
    vv = rand(1, 50, Hkv, D).transpose(1, 2)
    out, lse = hydrogen_ops.prefix_attention(q, kk, vv)
    assert_close(out, lse, *ref_prefix(q, kk, vv), torch.bfloat16, "prefix noncontiguous")
    # Unaligned view: forces a copy inside the op.
    base = rand(B * Hq * S * D + 3)
    qu = base[3:].view(B, Hq, S, D)
    out, lse = hydrogen_ops.prefix_attention(qu, kk, vv)
    assert_close(out, lse, *ref_prefix(qu, kk, vv), torch.bfloat16, "prefix unaligned")
    # Empty prefix (Lp = 0) and empty batch.
    k0 = rand(1, Hkv, 0, D)
    out, lse = hydrogen_ops.prefix_attention(q, k0, k0)
    torch.cuda.synchronize()
    assert (out == 0).all() and torch.isneginf(lse).all()
    out, lse = hydrogen_ops.prefix_attention(rand(0, Hq, 1, D), kk, vv)
    assert out.shape == (0, Hq, 1, D) and lse.shape == (0, Hq, 1)


def test_prefix_out_dtype_and_scale():
    torch.manual_seed(6)
    q, k, v = rand(4, 8, 1, 128), rand(1, 8, 333, 128), rand(1, 8, 333, 128)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, scale=0.3, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, lse, *ref_prefix(q, k, v, scale=0.3), torch.bfloat16, "prefix fp32 out")
    out, lse = hydrogen_ops.prefix_attention(q, k, v, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert_close(out, lse, *ref_prefix(q, k, v), torch.bfloat16, "prefix fp16 out")


def test_prefix_long_split():
    """Few rows and a long prefix: exercises the split-KV path and its merge."""
    torch.manual_seed(7)
    q, k, v = rand(2, 4, 1, 128), rand(1, 1, 9000, 128), rand(1, 1, 9000, 128)
    kv_lens = torch.tensor([8191], device=DEV)
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens)
    assert_close(out, lse, *ref_prefix(q, k, v, kv_lens), torch.bfloat16, "prefix split")


# ----------------------------------------------------------------------------- suffix
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_suffix_head_dims_dtypes(dtype, D):
    torch.manual_seed(10)
    B, Hq, Hkv, Lq, Ls = 5, 8, 2, 1, 130
    q, k, v = rand(B, Hq, Lq, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype)
    kv_lens = torch.tensor([130, 1, 0, 64, 77], device=DEV)
    out, lse = hydrogen_ops.suffix_attention(q, k, v, kv_lens)
    assert_close(out, lse, *ref_suffix(q, k, v, kv_lens), dtype, f"suffix D={D} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv", [(1, 4, 4), (64, 32, 8), (9, 32, 1), (3, 16, 2)])
@pytest.mark.parametrize("Lq", [1, 2, 5, 16, 37])
@pytest.mark.parametrize("causal", [True, False])
def test_suffix_shapes(dtype, B, Hq, Hkv, Lq, causal):
    torch.manual_seed(11)
    D, Ls = 128, 96
    q, k, v = rand(B, Hq, Lq, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype)
    # Include lengths shorter than Lq (rows with no visible key under the causal mask) and 0.
    kv_lens = torch.randint(0, Ls + 1, (B,), device=DEV, dtype=torch.int32)
    kv_lens[0] = Ls
    if B > 2:
        kv_lens[1] = 0
        kv_lens[2] = max(Lq - 2, 0)
    out, lse = hydrogen_ops.suffix_attention(q, k, v, kv_lens, causal=causal)
    assert_close(out, lse, *ref_suffix(q, k, v, kv_lens, causal), dtype, "suffix shapes")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Lq", [1, 4, 40])
def test_suffix_long_split(dtype, Lq):
    torch.manual_seed(12)
    B, Hq, Hkv, D, Ls = 2, 8, 2, 64, 5000
    q, k, v = rand(B, Hq, Lq, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype)
    kv_lens = torch.tensor([5000, 3333], device=DEV)
    out, lse = hydrogen_ops.suffix_attention(q, k, v, kv_lens)
    assert_close(out, lse, *ref_suffix(q, k, v, kv_lens), dtype, "suffix split")


def test_suffix_out_of_range_and_defaults():
    torch.manual_seed(13)
    B, Hq, Hkv, Lq, D, Ls = 4, 4, 4, 2, 64, 50
    q, k, v = rand(B, Hq, Lq, D), rand(B, Hkv, Ls, D), rand(B, Hkv, Ls, D)
    kv_lens = torch.tensor([-3, 10**9, 1, 50], device=DEV)
    out, lse = hydrogen_ops.suffix_attention(q, k, v, kv_lens)
    assert_close(out, lse, *ref_suffix(q, k, v, kv_lens), torch.bfloat16, "suffix out of range")
    out, lse = hydrogen_ops.suffix_attention(q, k, v, causal=False, scale=0.5, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, lse, *ref_suffix(q, k, v, None, False, 0.5), torch.bfloat16, "suffix defaults")
    k0 = rand(B, Hkv, 0, D)
    out, lse = hydrogen_ops.suffix_attention(q, k0, k0)
    torch.cuda.synchronize()
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_suffix_noncontiguous():
    torch.manual_seed(14)
    B, S, Hq, Hkv, D, Ls = 3, 3, 8, 2, 96, 40
    q = rand(B, S, Hq, D).transpose(1, 2)
    k = rand(B, Ls, Hkv, D).transpose(1, 2)
    v = rand(B, Ls, Hkv, D).transpose(1, 2)
    out, lse = hydrogen_ops.suffix_attention(q, k, v)
    assert_close(out, lse, *ref_suffix(q, k, v), torch.bfloat16, "suffix noncontiguous")


# ----------------------------------------------------------------------------- merge
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 40])
def test_merge(dtype, n):
    torch.manual_seed(20)
    B, H, L, D = 3, 4, 5, 80
    outs = [rand(B, H, L, D, dtype=dtype) for _ in range(n)]
    lses = [torch.randn(B, H, L, device=DEV) * 3 for _ in range(n)]
    for i, l in enumerate(lses):  # empty segments, with garbage outs that must not be read
        l[0, 0, i % L] = float("-inf")
        outs[i][0, 0, i % L] = float("nan")
    for l in lses:  # a row where every segment is empty
        l[2, 3, 4] = float("-inf")
    lses[n - 1][1, 1, 2] = float("inf")  # not an empty marker: NaN in, NaN out
    lses[0][1, 2, 3] = float("nan")
    out, lse = hydrogen_ops.merge_attention(outs, lses)
    assert out.dtype == dtype
    poisoned = torch.zeros(B, H, L, dtype=torch.bool, device=DEV)
    poisoned[1, 1, 2] = poisoned[1, 2, 3] = True
    assert torch.isnan(out[poisoned]).all() and torch.isnan(lse[poisoned]).all()
    ref_out, ref_lse = ref_merge(outs, lses)
    out, lse = out.masked_fill(poisoned[..., None], 0), lse.masked_fill(poisoned, 0)
    ref_out = ref_out.masked_fill(poisoned[..., None].cpu(), 0)
    ref_lse = ref_lse.masked_fill(poisoned.cpu(), 0)
    assert_close(out, lse, ref_out, ref_lse, dtype, f"merge n={n}")
    assert (out[2, 3, 4] == 0).all() and torch.isneginf(lse[2, 3, 4])


@pytest.mark.parametrize("D", [64, 80, 7])
def test_merge_layouts(D):
    torch.manual_seed(21)
    B, H, L = 2, 3, 4
    # Non-contiguous lse (vLLM #21996), non-contiguous and unaligned outs.
    lse_buf = torch.randn(3, L, H, B, device=DEV)
    lses = [lse_buf[i].permute(2, 1, 0) for i in range(3)]
    o0 = rand(B, L, H, D).transpose(1, 2)
    o1 = rand(B * H * L * D + 1)[1:].view(B, H, L, D)
    o2 = rand(B, H, L, D * 2)[..., :D]
    outs = [o0, o1, o2]
    for out_dtype in [None, torch.float32, torch.float16]:
        out, lse = hydrogen_ops.merge_attention(outs, lses, out_dtype=out_dtype)
        assert out.dtype == (out_dtype or torch.bfloat16) and out.is_contiguous() and lse.is_contiguous()
        assert_close(out, lse, *ref_merge(outs, lses), torch.bfloat16, "merge layouts")


# ----------------------------------------------------------------------------- CPU agreement
def _cpu_ok():
    try:
        q = torch.randn(1, 1, 1, 64)
        torch.ops.hydrogen.prefix_attention(q, q, q, None, None, None, None)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    if not _cpu_ok():
        pytest.skip("CPU implementation not available")
    torch.manual_seed(30)
    B, Hq, Hkv, Lq, D, P, Lp, Ls = 9, 8, 2, 3, 64, 3, 70, 20
    q = rand(B, Hq, Lq, D, dtype=dtype)
    kp, vp = rand(P, Hkv, Lp, D, dtype=dtype), rand(P, Hkv, Lp, D, dtype=dtype)
    ks, vs = rand(B, Hkv, Ls, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype)
    plen = torch.tensor([70, 33, 0], device=DEV)
    s2p = torch.tensor([0, 1, 2, 0, 1, 0, 0, 2, 1], device=DEV)
    slen = torch.randint(0, Ls + 1, (B,), device=DEV)
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    for args in [(q, kp, vp, plen, s2p)]:
        a = hydrogen_ops.prefix_attention(*args)
        b = hydrogen_ops.prefix_attention(*[cpu(t) for t in args])
        assert_close(a[0], a[1], b[0].double(), b[1].double(), dtype, "prefix cuda vs cpu")
    for causal in [True, False]:
        a = hydrogen_ops.suffix_attention(q, ks, vs, slen, causal=causal)
        b = hydrogen_ops.suffix_attention(q.cpu(), ks.cpu(), vs.cpu(), slen.cpu(), causal=causal)
        assert_close(a[0], a[1], b[0].double(), b[1].double(), dtype, "suffix cuda vs cpu")
    outs = [rand(B, Hq, Lq, D, dtype=dtype) for _ in range(3)]
    lses = [torch.randn(B, Hq, Lq, device=DEV) for _ in range(3)]
    lses[1][0] = float("-inf")
    a = hydrogen_ops.merge_attention(outs, lses)
    b = hydrogen_ops.merge_attention([o.cpu() for o in outs], [l.cpu() for l in lses])
    assert_close(a[0], a[1], b[0].double(), b[1].double(), dtype, "merge cuda vs cpu")


# ----------------------------------------------------------------------------- composition
def _hydragen_inputs(dtype=torch.bfloat16, B=16, Hq=8, Hkv=2, D=128, Lp=600, Ls=48):
    q = rand(B, Hq, 1, D, dtype=dtype)
    kp, vp = rand(1, Hkv, Lp, D, dtype=dtype), rand(1, Hkv, Lp, D, dtype=dtype)
    k2, v2 = rand(2, Hkv, 100, D, dtype=dtype), rand(2, Hkv, 100, D, dtype=dtype)
    s2p = (torch.arange(B, device=DEV) % 2).to(torch.int32)
    len2 = torch.tensor([100, 37], device=DEV, dtype=torch.int32)
    ks, vs = rand(B, Hkv, Ls, D, dtype=dtype), rand(B, Hkv, Ls, D, dtype=dtype)
    slen = torch.randint(1, Ls + 1, (B,), device=DEV, dtype=torch.int32)
    return q, [(kp, vp, None, None), (k2, v2, len2, s2p)], (ks, vs, slen)


def _hydragen_reference(q, prefixes, suffix):
    parts = [ref_prefix(q, k, v, l, s) for k, v, l, s in prefixes]
    parts.append(ref_suffix(q, *suffix))
    return ref_merge([p[0] for p in parts], [p[1] for p in parts])


def test_hydragen_attention_matches_reference():
    torch.manual_seed(40)
    q, prefixes, suffix = _hydragen_inputs()
    out, lse = hydrogen_ops.hydragen_attention(q, prefixes, suffix, return_lse=True)
    assert_close(out, lse, *_hydragen_reference(q, prefixes, suffix), torch.bfloat16, "hydragen")


def test_cuda_graph_capture_replay():
    torch.manual_seed(41)
    q, prefixes, suffix = _hydragen_inputs()
    fn = lambda: hydrogen_ops.hydragen_attention(q, prefixes, suffix)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = fn()
    # New values in the same buffers, including the device-side lengths and mapping.
    q.copy_(rand(*q.shape))
    prefixes[1][2].copy_(torch.tensor([3, 100], device=DEV, dtype=torch.int32))
    prefixes[1][3].copy_(1 - prefixes[1][3])
    suffix[2].copy_(torch.randint(1, suffix[0].shape[2] + 1, suffix[2].shape, device=DEV, dtype=torch.int32))
    g.replay()
    torch.cuda.synchronize()
    eager = fn()
    torch.testing.assert_close(static_out, eager, atol=0, rtol=0)


def test_torch_compile_fullgraph():
    torch.manual_seed(42)
    q, prefixes, suffix = _hydragen_inputs()

    @torch.compile(fullgraph=True)
    def f(q, kp, vp, k2, v2, len2, s2p, ks, vs, slen):
        return hydrogen_ops.hydragen_attention(q, [(kp, vp, None, None), (k2, v2, len2, s2p)], (ks, vs, slen))

    out = f(q, *prefixes[0][:2], *prefixes[1], *suffix)
    eager = hydrogen_ops.hydragen_attention(q, prefixes, suffix)
    torch.testing.assert_close(out, eager, atol=0, rtol=0)


# ----------------------------------------------------------------------------- errors
def test_unsupported_head_dim():
    q = rand(1, 2, 1, 48)
    with pytest.raises(ValueError, match="head_dim"):
        hydrogen_ops.prefix_attention(q, q, q)
    with pytest.raises(ValueError, match="head_dim"):
        hydrogen_ops.suffix_attention(q, q, q)


# ----------------------------------------------------------------------------- > 2^31 elements
def test_prefix_more_than_2_31_elements():
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs ~12 GB of free GPU memory")
    torch.manual_seed(50)
    Hkv, D = 8, 128
    Lp = 2**31 // (Hkv * D) + 1000  # k.numel() > 2^31
    assert Hkv * Lp * D > 2**31
    k = torch.randn(1, Hkv, Lp, D, device=DEV, dtype=torch.bfloat16)
    v = torch.randn(1, Hkv, Lp, D, device=DEV, dtype=torch.bfloat16)
    B, Hq = 3, 16
    q = torch.randn(B, Hq, 1, D, device=DEV, dtype=torch.bfloat16)
    n = Lp - 7
    kv_lens = torch.tensor([n], device=DEV)
    # Rows of the last kv head (element offsets beyond 2^31) get one dominant key, so that
    # any addressing error changes the output completely.
    checks = [(0, 15, n - 100), (2, 14, n - 5000), (1, 0, None)]
    for b, hq, star in checks:
        if star is not None:
            q[b, hq, 0] = k[0, hq // (Hq // Hkv), star] * 3
    out, lse = hydrogen_ops.prefix_attention(q, k, v, kv_lens)
    torch.cuda.synchronize()
    scale = 1.0 / math.sqrt(D)
    for b, hq, star in checks:
        h = hq // (Hq // Hkv)
        qq = q[b, hq, 0].double()
        m, s, acc = float("-inf"), 0.0, torch.zeros(D, dtype=torch.float64, device=DEV)
        for c0 in range(0, n, 1 << 20):
            c1 = min(n, c0 + (1 << 20))
            sc = (k[0, h, c0:c1].double() @ qq) * scale
            m_new = max(m, sc.max().item())
            w = torch.exp(sc - m_new)
            corr = math.exp(m - m_new) if m != float("-inf") else 0.0
            acc = acc * corr + w @ v[0, h, c0:c1].double()
            s = s * corr + w.sum().item()
            m = m_new
        ref_out = (acc / s).cpu()
        ref_lse = m + math.log(s)
        if star is not None:  # sanity: the dominant key is what the reference sees
            torch.testing.assert_close(ref_out, v[0, h, star].double().cpu(), atol=5e-2, rtol=0)
        atol = 2e-2 * max(ref_out.abs().max().item(), 1e-3)
        torch.testing.assert_close(out[b, hq, 0].double().cpu(), ref_out, atol=atol, rtol=2e-2)
        assert abs(lse[b, hq, 0].item() - ref_lse) < 2e-3
    del k, v
    torch.cuda.empty_cache()

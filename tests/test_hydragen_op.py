"""The fused op torch.ops.hydrogen.hydragen_attention: every level and the suffix in one
dispatcher call, on each path the cost model can pick (HYDROGEN_SHARING forces one)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import hydrogen_ops as H
from conftest import assert_close_to_exact, assert_lse_close
from reference import concat_reference

PATHS = ["auto", "always", "never"]


@pytest.fixture(params=PATHS)
def sharing(request, monkeypatch):
    monkeypatch.setenv("HYDROGEN_SHARING", request.param)
    return request.param


def per_head(k, heads):
    return k.repeat_interleave(heads // k.shape[1], dim=1)


def reference(q, levels, suffix, causal=True):
    """Float64 attention over each sequence's [level 0 | level 1 | ... | suffix], with every
    segment expanded to q's heads (levels may have different kv-head counts)."""
    B, Hq = q.shape[:2]
    segments = []
    for k, v, lens, s2p in levels:
        idx = torch.zeros(B, dtype=torch.long, device=q.device) if s2p is None else s2p.long()
        n = torch.full((B,), k.shape[2]) if lens is None else lens.cpu()[idx.cpu()]
        segments.append((per_head(k[idx], Hq), per_head(v[idx], Hq), n))
    if suffix is None:  # concat_reference's last segment is the causal one: add an empty suffix
        k0 = q.new_zeros(B, Hq, 0, q.shape[3])
        suffix = (k0, k0, torch.zeros(B, dtype=torch.long))
    ks, vs, lens = suffix
    segments.append((per_head(ks, Hq), per_head(vs, Hq), lens.cpu() if lens is not None else None))
    return concat_reference(q, segments, causal=causal)


# (B, Hq, Lq, D, levels [(P, Hkv, L)], suffix (Hkv, L) or None)
CASES = [
    (1, 8, 1, 64, [(1, 8, 300)], (8, 20)),  # batch 1
    (6, 8, 1, 128, [(1, 2, 513), (3, 4, 40)], (2, 9)),  # kv heads differ per level
    (9, 12, 3, 64, [(1, 4, 100), (2, 6, 33), (4, 3, 17)], (2, 12)),  # three levels, GQA 3/2/4/6, causal Lq 3
    (4, 4, 2, 256, [(2, 1, 70)], None),  # no suffix, MQA
    (5, 8, 1, 80, [], (4, 33)),  # no level
    (33, 8, 1, 64, [(1, 8, 0), (2, 2, 50)], (8, 5)),  # an empty level
]


def make_case(case, dtype, gen):
    B, Hq, Lq, D, level_shapes, suffix_shape = case
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    q = rnd(B, Hq, Lq, D)
    levels = []
    for P, Hkv, L in level_shapes:
        lens = torch.randint(0, L + 1, (P,), generator=gen) if L else torch.zeros(P, dtype=torch.long)
        lens[0] = L
        s2p = torch.randint(0, P, (B,), generator=gen) if P > 1 else None
        if P > 2:
            s2p = s2p.clamp(max=P - 2)  # an unused prefix
        levels.append((rnd(P, Hkv, L, D), rnd(P, Hkv, L, D), lens, s2p))
    suffix = None
    if suffix_shape is not None:
        Hkv, L = suffix_shape
        lens = torch.randint(Lq, L + 1, (B,), generator=gen)
        lens[0] = 0 if Lq == 1 else Lq  # an empty suffix where decode allows one
        suffix = (rnd(B, Hkv, L, D), rnd(B, Hkv, L, D), lens)
    return q, levels, suffix


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_path_matches_float64(case, dtype, sharing):
    gen = torch.Generator().manual_seed(case)
    q, levels, suffix = make_case(CASES[case], dtype, gen)
    out, lse = H.hydragen_attention(q, levels, suffix, return_lse=True)
    ref_out, ref_lse = reference(q, levels, suffix)
    assert out.dtype == dtype
    assert_close_to_exact(out, ref_out, dtype)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_shared_path_equals_the_three_ops_bitwise(case, monkeypatch):
    """Fused math must agree with unfused math: with every level shared, the fused op is
    prefix_attention per level + suffix_attention + merge_attention, bit for bit."""
    monkeypatch.setenv("HYDROGEN_SHARING", "always")
    gen = torch.Generator().manual_seed(100 + case)
    q, levels, suffix = make_case(CASES[case], torch.bfloat16, gen)
    parts = [H.prefix_attention(q, k, v, lens, s2p, out_dtype=torch.float32) for k, v, lens, s2p in levels]
    if suffix is not None:
        parts.append(H.suffix_attention(q, *suffix, out_dtype=torch.float32))
    want = H.merge_attention([o for o, _ in parts], [s for _, s in parts], out_dtype=q.dtype)
    got = H.hydragen_attention(q, levels, suffix, return_lse=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_non_causal_suffix_and_scale(sharing):
    gen = torch.Generator().manual_seed(7)
    q, levels, suffix = make_case(CASES[2], torch.float32, gen)
    out, lse = H.hydragen_attention(q, levels, suffix, causal=False, scale=0.3, return_lse=True)
    segments_ref = reference(q * (0.3 * q.shape[-1] ** 0.5), levels, suffix, causal=False)
    assert_close_to_exact(out, segments_ref[0], torch.float32)
    assert_lse_close(lse, segments_ref[1], atol=5e-5)


def test_opcheck():
    gen = torch.Generator().manual_seed(3)
    q, levels, suffix = make_case(CASES[2], torch.float32, gen)
    op = torch.ops.hydrogen.hydragen_attention
    ks, vs, lens, s2p = (list(x) for x in zip(*levels))
    torch.library.opcheck(op, (q, ks, vs, lens, s2p, *suffix, True, None, None))
    torch.library.opcheck(op, (q, ks[:1], vs[:1], lens[:1], s2p[:1], None, None, None, False, 0.5, torch.float32))
    torch.library.opcheck(op, (q, [], [], [], [], *suffix, True, None, torch.bfloat16))


def test_torch_compile_fullgraph_one_call():
    gen = torch.Generator().manual_seed(4)
    q, levels, suffix = make_case(CASES[1], torch.float32, gen)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = lambda q: H.hydragen_attention(q, levels, suffix, return_lse=True)  # noqa: E731
    got = torch.compile(fn, fullgraph=True, backend=backend)(q)
    torch.testing.assert_close(got, fn(q), rtol=0, atol=0)
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function" and "hydrogen" in str(n.target)]
    assert ops == ["hydrogen.hydragen_attention"]


def bad_calls():
    gen = torch.Generator().manual_seed(5)
    q, levels, suffix = make_case(CASES[1], torch.float32, gen)
    (k0, v0, l0, s0), (k1, v1, l1, s1) = levels
    ks, vs, ls = suffix
    op = torch.ops.hydrogen.hydragen_attention
    return {
        "list lengths": (lambda: op(q, [k0, k1], [v0], [l0, l1], [s0, s1], ks, vs, ls), r"must have one length"),
        "suffix_k only": (lambda: op(q, [k0], [v0], [l0], [s0], ks, None, None), r"give suffix_k and suffix_v together"),
        "lens without suffix": (lambda: op(q, [k0], [v0], [l0], [s0], None, None, ls), r"suffix_kv_lens is given without"),
        "nothing": (lambda: op(q, [], [], [], [], None, None, None), r"at least one prefix level or a suffix"),
        "level named": (
            lambda: op(q, [k0, k1[:, :3]], [v0, v1[:, :3]], [l0, l1], [s0, s1], ks, vs, ls),
            r"prefix level 1: q_heads \(8\) must be a multiple of kv_heads \(3\)",
        ),
        "level needs seq_to_prefix": (
            lambda: op(q, [k1], [v1], [l1], [None], ks, vs, ls), r"prefix level 0: seq_to_prefix is required"
        ),
        "suffix batch": (lambda: op(q, [], [], [], [], ks[:2], vs[:2], None), r"suffix: k and v must hold one sequence"),
        "scale": (lambda: op(q, [k0], [v0], [l0], [s0], ks, vs, ls, True, 1e300), r"scale must be finite in float32"),
        "out_dtype": (lambda: op(q, [k0], [v0], [l0], [s0], ks, vs, ls, True, None, torch.int64), r"out_dtype must be"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
@pytest.mark.parametrize("fake", [False, True])
def test_bad_input(case, fake):
    if fake:
        with FakeTensorMode():
            call, message = bad_calls()[case]
            with pytest.raises(ValueError, match=message):
                call()
    else:
        call, message = bad_calls()[case]
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_sharing_variable(monkeypatch):
    monkeypatch.setenv("HYDROGEN_SHARING", "sometimes")
    gen = torch.Generator().manual_seed(6)
    q, levels, suffix = make_case(CASES[1], torch.float32, gen)
    with pytest.raises(ValueError, match="HYDROGEN_SHARING must be auto, always or never"):
        H.hydragen_attention(q, levels, suffix)

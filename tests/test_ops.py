"""The three ops against a float64 reference, over many shapes, dtypes and devices."""

import pytest
import torch

import hydrogen_ops as H
from conftest import assert_close_to_exact, assert_lse_close
from reference import attention_reference, concat_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, Hq, Hkv, Lq, L, D): batch 1 and 64, GQA ratios 1/4/8, MQA, every head dim,
# key counts that straddle the 256-key tile, decode and multi-token queries.
SHAPES = [
    (1, 8, 8, 1, 37, 64),
    (64, 16, 4, 1, 300, 128),
    (3, 32, 4, 4, 257, 128),
    (5, 8, 1, 1, 513, 96),  # MQA
    (2, 16, 2, 3, 256, 80),
    (4, 8, 8, 2, 70, 256),
    (9, 12, 12, 1, 1, 64),
]


def randn(*shape, dtype, device):
    return torch.randn(*shape, dtype=dtype, device=device)


def shape_id(s):
    return "B{}-Hq{}-Hkv{}-Lq{}-L{}-D{}".format(*s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_suffix_attention_matches_reference(shape, dtype, device):
    torch.manual_seed(0)
    B, Hq, Hkv, Lq, L, D = shape
    q, k, v = randn(B, Hq, Lq, D, dtype=dtype, device=device), *(randn(B, Hkv, L, D, dtype=dtype, device=device) for _ in range(2))
    # Padding everywhere, plus an empty sequence and a full one.
    kv_lens = torch.randint(0, L + 1, (B,), device=device)
    kv_lens[0] = L
    if B > 1:
        kv_lens[1] = 0
    for causal in (True, False):
        out, lse = H.suffix_attention(q, k, v, kv_lens, causal=causal)
        ref_out, ref_lse = attention_reference(q, k, v, kv_lens, causal=causal)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert out.shape == q.shape and lse.shape == q.shape[:3]
        assert_close_to_exact(out, ref_out, dtype)
        assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_prefix_attention_matches_reference(shape, dtype, device):
    torch.manual_seed(1)
    B, Hq, Hkv, Lq, L, D = shape
    q = randn(B, Hq, Lq, D, dtype=dtype, device=device)
    # One shared prefix, then three prefixes with an uneven mapping, one of them empty
    # and one mapped to no sequence at all.
    k1, v1 = randn(1, Hkv, L, D, dtype=dtype, device=device), randn(1, Hkv, L, D, dtype=dtype, device=device)
    out, lse = H.prefix_attention(q, k1, v1)
    ref_out, ref_lse = attention_reference(q, k1.expand(B, -1, -1, -1), v1.expand(B, -1, -1, -1))
    assert_close_to_exact(out, ref_out, dtype)
    assert_lse_close(lse, ref_lse)

    P = 4
    k, v = randn(P, Hkv, L, D, dtype=dtype, device=device), randn(P, Hkv, L, D, dtype=dtype, device=device)
    kv_lens = torch.tensor([L, 0, max(L // 3, 1), L], device=device)
    seq_to_prefix = torch.tensor([(b * b) % 3 for b in range(B)], device=device)  # prefix 3 is unused
    out, lse = H.prefix_attention(q, k, v, kv_lens, seq_to_prefix)
    ref_out, ref_lse = attention_reference(q, k[seq_to_prefix], v[seq_to_prefix], kv_lens[seq_to_prefix])
    assert_close_to_exact(out, ref_out, dtype)
    assert_lse_close(lse, ref_lse)


def test_empty_rows_give_zero_and_neg_inf(device):
    q = torch.randn(2, 4, 3, 64, device=device)
    k = torch.randn(2, 2, 5, 64, device=device)
    out, lse = H.suffix_attention(q, k, k, torch.tensor([0, 1], device=device))
    # Sequence 0 has no keys; in sequence 1 only the last query sees its one key.
    assert torch.all(out[0] == 0) and torch.all(torch.isneginf(lse[0]))
    assert torch.all(out[1, :, :2] == 0) and torch.all(torch.isneginf(lse[1, :, :2]))
    assert torch.isfinite(lse[1, :, 2]).all()
    out, lse = H.prefix_attention(q, k[:1], k[:1], torch.tensor([0], device=device))
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


def test_strided_inputs(device):
    """HF passes q as a transposed view; K/V may be slices of a larger cache."""
    torch.manual_seed(2)
    B, S, Hq, Hkv, D = 3, 4, 8, 2, 64
    q = torch.randn(B, S, Hq, D, device=device).transpose(1, 2)
    cache = torch.randn(B, Hkv, 50, 2 * D, device=device)
    k, v = cache[..., :D], cache[..., D:]  # row stride 2D, not D
    kk = torch.randn(B, Hkv, D, 40, device=device).transpose(-1, -2)  # last-dim stride != 1
    out, lse = H.suffix_attention(q, k, v)
    ref_out, ref_lse = attention_reference(q, k, v, causal=True)
    assert_close_to_exact(out, ref_out, torch.float32)
    out, lse = H.prefix_attention(q, kk[:1], kk[:1])
    ref_out, _ = attention_reference(q, kk[:1].expand(B, -1, -1, -1), kk[:1].expand(B, -1, -1, -1))
    assert_close_to_exact(out, ref_out, torch.float32)


def test_scale_and_out_dtype(device):
    torch.manual_seed(3)
    q = torch.randn(2, 4, 1, 64, dtype=torch.bfloat16, device=device)
    k = torch.randn(2, 4, 30, 64, dtype=torch.bfloat16, device=device)
    out, lse = H.suffix_attention(q, k, k, scale=0.3, out_dtype=torch.float32)
    ref_out, ref_lse = attention_reference(q, k, k, causal=True, scale=0.3)
    assert out.dtype == torch.float32
    assert_close_to_exact(out, ref_out, torch.float32)
    assert_lse_close(lse, ref_lse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_matches_reference(dtype, device):
    torch.manual_seed(4)
    B, Hh, L, D, n = 3, 4, 5, 64, 4
    outs = [torch.randn(B, Hh, L, D, device=device).to(dtype) for _ in range(n)]
    lses = [torch.randn(B, Hh, L, device=device) * 3 for _ in range(n)]
    lses[1][0] = float("-inf")  # one empty segment in batch 0
    out, lse = H.merge_attention(outs, lses)
    stacked = torch.stack([s.double() for s in lses])
    ref_lse = torch.logsumexp(stacked, dim=0)
    w = torch.exp(stacked - ref_lse)
    ref = sum(w[i].unsqueeze(-1) * outs[i].double() for i in range(n))
    assert_close_to_exact(out, ref, dtype)
    assert_lse_close(lse, ref_lse)


def test_merge_all_empty_gives_zero_not_nan(device):
    # An empty segment's out is never read: even garbage there must not leak into the result.
    outs = [torch.full((1, 2, 3, 64), float("nan"), device=device), torch.zeros(1, 2, 3, 64, device=device)]
    lses = [torch.full((1, 2, 3), float("-inf"), device=device) for _ in range(2)]
    out, lse = H.merge_attention(outs, lses)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


def test_merge_non_contiguous_lse(device):
    """A transposed LSE view must be read by its strides (vLLM #21996)."""
    torch.manual_seed(5)
    outs = [torch.randn(2, 3, 4, 64, device=device) for _ in range(2)]
    lses = [torch.randn(2, 4, 3, device=device).transpose(1, 2) for _ in range(2)]
    out, lse = H.merge_attention(outs, lses)
    ref_out, ref_lse = H.merge_attention(outs, [s.contiguous() for s in lses])
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=0)


def test_merge_output_is_not_an_input(device):
    outs = [torch.randn(1, 2, 3, 64, device=device)]
    lses = [torch.randn(1, 2, 3, device=device)]
    out, lse = H.merge_attention(outs, lses)
    assert out.data_ptr() != outs[0].data_ptr() and lse.data_ptr() != lses[0].data_ptr()
    torch.testing.assert_close(out, outs[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hydragen_hierarchical_matches_concatenation(dtype, device):
    """Level 0 shared by all, level 1 by groups of uneven size, then the causal suffix."""
    torch.manual_seed(6)
    B, Hq, Hkv, Lq, D = 7, 8, 2, 3, 64
    q = torch.randn(B, Hq, Lq, D, dtype=dtype, device=device)
    k0, v0 = (torch.randn(1, Hkv, 300, D, dtype=dtype, device=device) for _ in range(2))
    k1, v1 = (torch.randn(3, Hkv, 40, D, dtype=dtype, device=device) for _ in range(2))
    lens1 = torch.tensor([40, 0, 17], device=device)
    group = torch.tensor([0, 0, 0, 0, 2, 1, 2], device=device)  # fan-out 4, 1, 2
    ks, vs = (torch.randn(B, Hkv, 9, D, dtype=dtype, device=device) for _ in range(2))
    lens_s = torch.tensor([9, 3, 5, 9, 4, 6, 3], device=device)  # every suffix has >= Lq keys
    out, lse = H.hydragen_attention(
        q, [(k0, v0, None, None), (k1, v1, lens1, group)], (ks, vs, lens_s), return_lse=True
    )
    segments = [
        (k0.expand(B, -1, -1, -1), v0.expand(B, -1, -1, -1), None),
        (k1[group], v1[group], lens1[group]),
        (ks, vs, lens_s),
    ]
    ref_out, ref_lse = concat_reference(q, segments, causal=True)
    assert out.dtype == dtype
    assert_close_to_exact(out, ref_out, dtype)
    assert_lse_close(lse, ref_lse)


def test_hydragen_without_suffix_and_without_prefix(device):
    torch.manual_seed(7)
    q = torch.randn(2, 4, 1, 64, device=device)
    k = torch.randn(1, 4, 20, 64, device=device)
    out = H.hydragen_attention(q, [(k, k, None, None)])
    ref, _ = attention_reference(q, k.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1))
    assert_close_to_exact(out, ref, torch.float32)
    ks = torch.randn(2, 4, 20, 64, device=device)
    out = H.hydragen_attention(q, [], (ks, ks, None))
    ref, _ = attention_reference(q, ks, ks, causal=True)
    assert_close_to_exact(out, ref, torch.float32)
    with pytest.raises(ValueError, match="at least one prefix level or a suffix"):
        H.hydragen_attention(q, [])


def test_fused_equals_unfused(device):
    """hydragen_attention (fp32 partials, one rounding) equals the ops composed by hand
    in fp32 and rounded at the end, bit for bit."""
    torch.manual_seed(8)
    q = torch.randn(4, 8, 1, 128, dtype=torch.bfloat16, device=device)
    kp, vp = (torch.randn(1, 8, 700, 128, dtype=torch.bfloat16, device=device) for _ in range(2))
    ks, vs = (torch.randn(4, 8, 33, 128, dtype=torch.bfloat16, device=device) for _ in range(2))
    fused = H.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))
    o1, l1 = H.prefix_attention(q, kp, vp, out_dtype=torch.float32)
    o2, l2 = H.suffix_attention(q, ks, vs, out_dtype=torch.float32)
    unfused, _ = H.merge_attention([o1, o2], [l1, l2], out_dtype=torch.bfloat16)
    assert torch.equal(fused, unfused)


def test_hydragen_equals_sdpa(device):
    """Against the stock path users replace: SDPA over each sequence's full KV."""
    torch.manual_seed(9)
    B, Hh, D, P, S = 6, 4, 64, 200, 11
    q = torch.randn(B, Hh, 1, D, device=device)
    kp, vp = (torch.randn(1, Hh, P, D, device=device) for _ in range(2))
    ks, vs = (torch.randn(B, Hh, S, D, device=device) for _ in range(2))
    out = H.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))
    k_full = torch.cat([kp.expand(B, -1, -1, -1), ks], dim=2)
    v_full = torch.cat([vp.expand(B, -1, -1, -1), vs], dim=2)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full)
    torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_cpu_isa_variant(isa, tmp_path):
    """The CPU kernels pick an ISA at load time; run the checks under each one this CPU has."""
    import os
    import platform
    import subprocess
    import sys

    if isa != "generic" and platform.machine() != "x86_64":
        pytest.skip("x86-only ISA variant")
    flags = open("/proc/cpuinfo").read() if isa != "generic" else ""
    if isa == "avx2" and " avx2" not in flags or isa == "avx512" and " avx512f" not in flags:
        pytest.skip(f"this CPU lacks {isa}")
    script = tmp_path / "check.py"
    script.write_text(
        "import sys, torch, hydrogen_ops as H\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from reference import attention_reference\n"
        "from conftest import assert_close_to_exact\n"
        "torch.manual_seed(0)\n"
        "for rows, Lq, L, D in [(3, 1, 300, 64), (40, 2, 513, 80), (64, 1, 260, 128)]:\n"
        "    q = torch.randn(rows, 8, Lq, D); k = torch.randn(1, 2, L, D); v = torch.randn(1, 2, L, D)\n"
        "    out, _ = H.prefix_attention(q, k, v)\n"
        "    ref, _ = attention_reference(q, k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))\n"
        "    assert_close_to_exact(out, ref, torch.float32)\n"
        "    ks = torch.randn(rows, 2, L, D)\n"
        "    out, _ = H.suffix_attention(q, ks, ks)\n"
        "    ref, _ = attention_reference(q, ks, ks, causal=True)\n"
        "    assert_close_to_exact(out, ref, torch.float32)\n"
        "# K/V conversion of every kind of half value: with one key, out == v exactly\n"
        "vals = [0.0, -0.0, 6e-8, -6e-8, 1e-5, 65504.0, -65504.0, 1.0, float('inf'), float('-inf'), float('nan')]\n"
        "v = torch.tensor((vals * 4)[:40], dtype=torch.half).view(1, 1, 1, 40)\n"
        "zeros = torch.zeros(1, 1, 1, 40, dtype=torch.half)\n"
        "out, _ = H.suffix_attention(zeros, zeros, v, out_dtype=torch.float32)\n"
        "assert torch.equal(out.isnan(), v.float().isnan())\n"
        "assert torch.equal(out.nan_to_num(0.0), v.float().nan_to_num(0.0)), (out, v)\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, HYDROGEN_CPU_ISA=isa, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]

"""Dispatcher integration (opcheck, torch.compile, autograd) and bad-input errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hydrogen_ops as H


def small_problem(device, dtype=torch.float32):
    torch.manual_seed(0)
    q = torch.randn(3, 4, 2, 64, dtype=dtype, device=device)
    kp = torch.randn(2, 2, 10, 64, dtype=dtype, device=device)
    ks = torch.randn(3, 2, 6, 64, dtype=dtype, device=device)
    return q, kp, ks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(dtype, device):
    q, kp, ks = small_problem(device, dtype)
    lens_p = torch.tensor([10, 4], device=device)
    s2p = torch.tensor([1, 0, 1], device=device)
    lens_s = torch.tensor([6, 2, 5], device=device, dtype=torch.int32)
    torch.library.opcheck(torch.ops.hydrogen.prefix_attention, (q, kp, kp, lens_p, s2p, None, None))
    torch.library.opcheck(torch.ops.hydrogen.prefix_attention, (q, kp[:1], kp[:1], None, None, 0.5, torch.float32))
    torch.library.opcheck(torch.ops.hydrogen.suffix_attention, (q, ks, ks, lens_s, True, None, None))
    torch.library.opcheck(torch.ops.hydrogen.suffix_attention, (q, ks, ks, None, False, 0.2, torch.float32))
    o, l = H.suffix_attention(q, ks, ks)
    torch.library.opcheck(torch.ops.hydrogen.merge_attention, ([o, o], [l, l], None))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    q, kp, ks = small_problem(device)
    lens_s = torch.tensor([6, 2, 5], device=device)

    def decode(q, kp, ks, lens_s):
        out, lse = H.hydragen_attention(q, [(kp[:1], kp[:1], None, None)], (ks, ks, lens_s), return_lse=True)
        return out * 2 + 1, lse  # a fused epilogue around the ops for the compiler to generate

    compiled = torch.compile(decode, fullgraph=True, backend=backend)
    eager = decode(q, kp, ks, lens_s)
    got = compiled(q, kp, ks, lens_s)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)


def test_backward_raises_clear_error(device):
    q, kp, ks = small_problem(device)
    q.requires_grad_(True)
    out, _ = H.suffix_attention(q, ks, ks)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


# Each case: (callable producing the bad call, words the message must contain).
def bad_calls(device):
    q, kp, ks = small_problem(device)
    o, l = H.suffix_attention(q, ks, ks)
    return {
        "q rank": (lambda: H.suffix_attention(q[0], ks, ks), r"q must have rank 4"),
        "k rank": (lambda: H.prefix_attention(q, kp[0], kp[0]), r"k must have rank 4"),
        "head_dim": (lambda: H.suffix_attention(q, ks[..., :32], ks[..., :32]), r"head_dim \(32\) must equal q head_dim \(64\)"),
        "k v shapes": (lambda: H.suffix_attention(q, ks, ks[:, :, :3]), r"k and v must have the same shape"),
        "gqa": (lambda: H.suffix_attention(q[:, :3], ks, ks), r"q_heads \(3\) must be a multiple of kv_heads \(2\)"),
        "dtype mix": (lambda: H.suffix_attention(q, ks.half(), ks.half()), r"q, k and v must share one dtype"),
        "dtype": (lambda: H.suffix_attention(q.double(), ks.double(), ks.double()), r"q must be float32, bfloat16 or float16"),
        "device mix": (lambda: H.suffix_attention(q, ks.to("meta"), ks.to("meta")), r"device"),
        "suffix batch": (lambda: H.suffix_attention(q, ks[:2], ks[:2]), r"expected k.shape\[0\] == 3, got 2"),
        "kv_lens negative": (
            lambda: H.suffix_attention(q, ks, ks, torch.tensor([6, -1, 2], device=device)),
            r"kv_lens\[1\] = -1 is outside \[0, 6\]",
        ),
        "kv_lens too long": (
            lambda: H.prefix_attention(q, kp, kp, torch.tensor([11, 2], device=device), torch.tensor([0, 1, 0], device=device)),
            r"kv_lens\[0\] = 11 is outside \[0, 10\]",
        ),
        "kv_lens shape": (lambda: H.suffix_attention(q, ks, ks, torch.tensor([6, 6], device=device)), r"kv_lens must have shape \[3\]"),
        "kv_lens dtype": (
            lambda: H.suffix_attention(q, ks, ks, torch.tensor([6.0, 6.0, 6.0], device=device)),
            r"kv_lens must be an int32 or int64 tensor",
        ),
        "seq_to_prefix range": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, 2, 1], device=device)),
            r"seq_to_prefix\[1\] = 2 is outside \[0, 2\)",
        ),
        "seq_to_prefix negative": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, -1, 1], device=device)),
            r"seq_to_prefix\[1\] = -1 is outside",
        ),
        "seq_to_prefix missing": (lambda: H.prefix_attention(q, kp, kp), r"seq_to_prefix is required"),
        "seq_to_prefix shape": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, 1], device=device)),
            r"seq_to_prefix must have shape \[3\]",
        ),
        "scale": (lambda: H.suffix_attention(q, ks, ks, scale=float("nan")), r"scale must be finite"),
        "out_dtype": (lambda: H.suffix_attention(q, ks, ks, out_dtype=torch.int32), r"out_dtype must be float32"),
        "merge lengths": (lambda: H.merge_attention([o, o], [l]), r"outs and lses must have the same length"),
        "merge empty": (lambda: H.merge_attention([], []), r"at least one tensor"),
        "merge shapes": (lambda: H.merge_attention([o, o[:, :1]], [l, l]), r"outs\[1\] has shape"),
        "merge lse shape": (lambda: H.merge_attention([o], [l[..., :1]]), r"lses\[0\] has shape"),
        "merge lse dtype": (lambda: H.merge_attention([o], [l.half()]), r"lses\[0\] must be float32"),
        "merge dtype mix": (lambda: H.merge_attention([o, o.half()], [l, l]), r"outs\[1\] has dtype"),
    }


CASES = list(bad_calls("cpu").keys())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_clear_error(case, device):
    call, message = bad_calls(device)[case]
    with pytest.raises((ValueError, RuntimeError), match=message):
        call()


# Property tests over the merge: exact math means order and grouping do not matter,
# and splitting a key set anywhere then merging equals not splitting.
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 5),
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    empty=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_merge_is_order_invariant_and_associative(n, rows, seed, empty):
    g = torch.Generator().manual_seed(seed)
    outs = [torch.randn(1, 2, rows, 64, generator=g) for _ in range(n)]
    lses = [torch.randn(1, 2, rows, generator=g) * 4 for _ in range(n)]
    for i in range(n):
        if empty[i]:
            lses[i][..., 0] = float("-inf")
    out, lse = H.merge_attention(outs, lses)
    perm = torch.randperm(n, generator=g).tolist()
    out_p, lse_p = H.merge_attention([outs[i] for i in perm], [lses[i] for i in perm])
    torch.testing.assert_close(out_p, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse_p, lse, rtol=1e-6, atol=1e-6)
    # ((0..k) merged) merged with (k..n) merged
    k = n // 2
    left = H.merge_attention(outs[:k], lses[:k])
    right = H.merge_attention(outs[k:], lses[k:])
    out_a, lse_a = H.merge_attention([left[0], right[0]], [left[1], right[1]])
    torch.testing.assert_close(out_a, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse_a, lse, rtol=1e-6, atol=1e-6)
    assert not torch.isnan(out).any()


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 600),
    cut_fraction=st.floats(0.0, 1.0),
    lq=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_split_kv_anywhere_then_merge_equals_unsplit(length, cut_fraction, lq, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, lq, 64, generator=g)
    k = torch.randn(1, 2, length, 64, generator=g)
    v = torch.randn(1, 2, length, 64, generator=g)
    cut = round(cut_fraction * length)
    whole, whole_lse = H.prefix_attention(q, k, v)
    a = H.prefix_attention(q, k[:, :, :cut], v[:, :, :cut])
    b = H.prefix_attention(q, k[:, :, cut:], v[:, :, cut:])
    out, lse = H.merge_attention([a[0], b[0]], [a[1], b[1]])
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(lse, whole_lse, rtol=1e-6, atol=2e-6)

"""Property tests over the merge and the split of a key set (needs hypothesis; skipped
with a reason where it is not installed, so the rest of the suite still runs)."""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install hypothesis)")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import hydrogen_ops as H  # noqa: E402


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

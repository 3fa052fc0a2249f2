"""The special-value contract, the same on every device, path and batch size:
NaN in, NaN out; lse = -inf means an empty segment, and only that."""

import pytest
import torch

import hydrogen_ops as H

NAN, INF = float("nan"), float("inf")


def decode_problem(B, device, dtype=torch.float32, Hq=4, Hkv=2, D=64):
    torch.manual_seed(B)
    q = torch.randn(B, Hq, 1, D, dtype=dtype, device=device)
    kp, vp = (torch.randn(1, Hkv, 40, D, dtype=dtype, device=device) for _ in range(2))
    ks, vs = (torch.randn(B, Hkv, 7, D, dtype=dtype, device=device) for _ in range(2))
    return q, kp, vp, ks, vs


def nan_rows(x):
    """[B, Hq, Lq] mask of rows holding a NaN (out: any element)."""
    return torch.isnan(x).any(-1) if x.dim() == 4 else torch.isnan(x)


# Batch sizes on both sides of the CPU's few-rows kernel (<= 8 stacked rows) and of a
# register tile: a NaN must not be dropped by one path and kept by another.
BATCHES = [1, 2, 3, 8, 9, 33]


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_query_poisons_its_row_only(B, dtype, device):
    q, kp, vp, ks, vs = decode_problem(B, device, dtype)
    q[B - 1, 1, 0, :] = NAN  # every score of one row is NaN
    expect = torch.zeros(B, 4, 1, dtype=torch.bool)
    expect[B - 1, 1, 0] = True
    for out, lse in (
        H.prefix_attention(q, kp, vp),
        H.suffix_attention(q, ks, vs),
        H.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None), return_lse=True),
    ):
        assert torch.equal(nan_rows(lse).cpu(), expect)
        assert torch.equal(nan_rows(out).cpu(), expect)


@pytest.mark.parametrize("B", BATCHES)
def test_nan_key_poisons_every_row_that_sees_it(B, device):
    q, kp, vp, ks, vs = decode_problem(B, device)
    kp[0, 1, 17, 5] = NAN  # one prefix key of kv head 1: query heads 2 and 3 of every sequence
    out, lse = H.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None), return_lse=True)
    expect = torch.zeros(B, 4, 1, dtype=torch.bool)
    expect[:, 2:] = True
    assert torch.equal(nan_rows(lse).cpu(), expect)
    assert torch.equal(nan_rows(out).cpu(), expect)


def test_nan_beyond_kv_lens_is_never_read(device):
    q, kp, vp, ks, vs = decode_problem(4, device)
    kp[:, :, 30:] = NAN
    vp[:, :, 30:] = NAN
    ks[:, :, 5:] = NAN
    lens_p = torch.tensor([30], device=device)
    lens_s = torch.full((4,), 5, device=device)
    out, lse = H.hydragen_attention(q, [(kp, vp, lens_p, None)], (ks, vs, lens_s), return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


def test_nan_in_a_value_reaches_the_output(device):
    q, kp, vp, ks, vs = decode_problem(9, device)
    vs[3, 0, 2, 7] = NAN
    out, lse = H.suffix_attention(q, ks, vs)
    assert torch.isnan(out[3, :2]).all(-1).logical_not().all()  # only column 7 is NaN
    assert torch.isnan(out[3, :2, 0, 7]).all() and not torch.isnan(lse).any()
    out[3, :2, 0, 7] = 0
    assert not torch.isnan(out).any()


def merge_inputs(device, lse_a, lse_b):
    torch.manual_seed(0)
    a, b = (torch.randn(1, 1, len(lse_a), 64, device=device) for _ in range(2))
    la = torch.tensor([[lse_a]], device=device)
    lb = torch.tensor([[lse_b]], device=device)
    return a, b, la, lb


def test_merge_nan_and_pos_inf_lse_give_nan_rows(device):
    a, b, la, lb = merge_inputs(device, [NAN, INF, NAN, 0.3], [0.5, 0.5, -INF, -INF])
    out, lse = H.merge_attention([a, b], [la, lb])
    assert torch.isnan(lse[0, 0, :3]).all() and torch.isnan(out[0, 0, :3]).all()
    torch.testing.assert_close(out[0, 0, 3], a[0, 0, 3])
    assert lse[0, 0, 3].item() == pytest.approx(0.3)


def test_merge_neg_inf_is_empty_and_not_read(device):
    a, b, la, lb = merge_inputs(device, [-INF, -INF], [0.5, -INF])
    a[0, 0, :] = NAN  # an empty segment's out may hold anything
    out, lse = H.merge_attention([a, b], [la, lb])
    torch.testing.assert_close(out[0, 0, 0], b[0, 0, 0])
    assert lse[0, 0, 0].item() == pytest.approx(0.5)
    assert torch.all(out[0, 0, 1] == 0) and torch.isneginf(lse[0, 0, 1])


def test_merge_nan_out_with_weight_reaches_the_output(device):
    a, b, la, lb = merge_inputs(device, [0.0], [0.0])
    a[0, 0, 0, 3] = NAN
    out, lse = H.merge_attention([a, b], [la, lb])
    assert torch.isnan(out[0, 0, 0, 3]) and torch.isnan(out).sum() == 1 and torch.isfinite(lse).all()


@pytest.mark.parametrize("big", [3e38, -3e38])
def test_merge_huge_finite_lse(big, device):
    a, b, la, lb = merge_inputs(device, [big, big], [big, -INF])
    out, lse = H.merge_attention([a, b], [la, lb])
    torch.testing.assert_close(out[0, 0, 0], (a[0, 0, 0] + b[0, 0, 0]) / 2)
    torch.testing.assert_close(out[0, 0, 1], a[0, 0, 1])
    # log(2) is below float32's resolution at 3e38: the merged lse is the input's.
    assert torch.isfinite(lse).all() and torch.allclose(lse, torch.full_like(lse, big))


@pytest.mark.parametrize("B", [1, 9])  # few-rows and stacked kernels
def test_row_that_sees_no_key_is_zero_even_beside_nan_values(B, device):
    """Causal with more queries than keys: query 0 sees no key while its tile loads the
    keys of the later queries. Its output is 0 and its lse -inf exactly, whatever those
    values hold (0 * NaN would be NaN)."""
    torch.manual_seed(0)
    q = torch.randn(B, 4, 3, 64, device=device)
    k = torch.randn(B, 2, 2, 64, device=device)
    v = torch.randn(B, 2, 2, 64, device=device)
    v[:, :, 1] = NAN  # seen by query 2 only
    out, lse = H.suffix_attention(q, k, v)
    assert torch.all(out[:, :, 0] == 0) and torch.isneginf(lse[:, :, 0]).all()
    assert torch.isnan(out[:, :, 2]).all() and torch.isfinite(lse[:, :, 1:]).all()

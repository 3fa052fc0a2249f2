"""Paged K/V: paged_prefix_attention and paged_suffix_attention read pages
[num_blocks, block_size, Hkv, D] through a block table, in place, and must equal the
dense ops on the gathered K/V bit for bit, and the float64 reference within the bound."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import hydrogen_ops as H
from conftest import assert_close_to_exact, assert_lse_close
from reference import attention_reference


def paged_problem(n, Hkv, D, block_size, max_len, dtype, gen, share_first_block=False):
    """n sequences of random lengths in a shuffled page pool. Returns pages, a block table
    with random page order and -1 in unused entries, lengths, and the dense gathered K/V."""
    max_blocks = -(-max_len // block_size)
    lens = torch.randint(0, max_len + 1, (n,), generator=gen)
    lens[0] = max_len  # one full row, one partial last block at least
    if n > 1:
        lens[1] = max(1, max_len - block_size // 2)
    num_blocks = n * max_blocks + 3  # spare pages that nobody reads
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.full((n, max_blocks), -1, dtype=torch.long)
    for i in range(n):
        used = -(-int(lens[i]) // block_size)
        table[i, :used] = perm[i * max_blocks : i * max_blocks + used]
    if share_first_block and n > 1:  # sequences that share their first page (a forked prompt)
        table[1:, 0] = torch.where(lens[1:] > 0, table[0, 0], table[1:, 0])
    k_pages = torch.randn(num_blocks, block_size, Hkv, D, generator=gen).to(dtype)
    v_pages = torch.randn(num_blocks, block_size, Hkv, D, generator=gen).to(dtype)
    dense = []
    for pages in (k_pages, v_pages):
        rows = pages[table.clamp(min=0)]  # [n, max_blocks, block_size, Hkv, D]
        dense.append(rows.reshape(n, max_blocks * block_size, Hkv, D).transpose(1, 2).contiguous())
    return k_pages, v_pages, table, lens, dense[0], dense[1]


# (B, Hq, Hkv, Lq, D, block_size, max_len)
SHAPES = [
    (1, 8, 8, 1, 64, 16, 300),
    (6, 8, 2, 1, 128, 32, 513),
    (5, 12, 4, 3, 64, 48, 200),  # block size that does not divide the 256-key tile
    (9, 8, 1, 1, 80, 256, 700),
    (3, 4, 2, 2, 256, 4, 37),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_paged_suffix_equals_dense(shape, dtype):
    B, Hq, Hkv, Lq, D, bs, L = SHAPES[shape]
    gen = torch.Generator().manual_seed(shape)
    k_pages, v_pages, table, lens, k, v = paged_problem(B, Hkv, D, bs, L, dtype, gen, share_first_block=True)
    lens = lens.clamp(min=Lq)
    q = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)
    for tbl in (table, table.int()):
        got = H.paged_suffix_attention(q, k_pages, v_pages, tbl, lens)
        want = H.suffix_attention(q, k, v, lens)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ref_out, ref_lse = attention_reference(q, k, v, lens, causal=True)
    assert_close_to_exact(got[0], ref_out, dtype)
    assert_lse_close(got[1], ref_lse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_paged_prefix_equals_dense(shape, dtype):
    B, Hq, Hkv, Lq, D, bs, L = SHAPES[shape]
    gen = torch.Generator().manual_seed(10 + shape)
    P = 3
    k_pages, v_pages, table, lens, k, v = paged_problem(P, Hkv, D, bs, L, dtype, gen)
    s2p = torch.randint(0, P - 1, (B,), generator=gen)  # the last prefix is unused
    q = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)
    got = H.paged_prefix_attention(q, k_pages, v_pages, table, lens, s2p)
    want = H.prefix_attention(q, k, v, lens, s2p)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ref_out, ref_lse = attention_reference(q, k[s2p], v[s2p], lens[s2p])
    assert_close_to_exact(got[0], ref_out, dtype)
    assert_lse_close(got[1], ref_lse)


def test_paged_single_prefix_without_seq_to_prefix():
    gen = torch.Generator().manual_seed(1)
    k_pages, v_pages, table, lens, k, v = paged_problem(1, 2, 64, 16, 100, torch.float32, gen)
    q = torch.randn(4, 4, 1, 64, generator=gen)
    got = H.paged_prefix_attention(q, k_pages, v_pages, table, lens)
    want = H.prefix_attention(q, k, v, lens)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    k_pages, v_pages, table, lens, _, _ = paged_problem(3, 2, 64, 16, 70, torch.float32, gen)
    q = torch.randn(3, 4, 2, 64, generator=gen)
    torch.library.opcheck(torch.ops.hydrogen.paged_suffix_attention, (q, k_pages, v_pages, table, lens.clamp(min=2), True, None, None))
    s2p = torch.tensor([2, 0, 2])
    torch.library.opcheck(torch.ops.hydrogen.paged_prefix_attention, (q, k_pages, v_pages, table, lens, s2p, 0.3, torch.float32))


def bad_calls(convert=lambda t: t):
    gen = torch.Generator().manual_seed(3)
    problem = paged_problem(3, 2, 64, 16, 70, torch.float32, gen)[:4] + (torch.randn(3, 4, 1, 64, generator=gen),)
    k_pages, v_pages, table, lens, q = (convert(t) for t in problem)
    pre, suf = H.paged_prefix_attention, H.paged_suffix_attention
    return {
        "table rank": (lambda: suf(q, k_pages, v_pages, table[0], lens), r"block_table must have rank 2"),
        "table dtype": (lambda: suf(q, k_pages, v_pages, table.float(), lens), r"block_table must be an int32 or int64"),
        "table rows": (lambda: suf(q, k_pages, v_pages, table[:2], lens[:2]), r"expected block_table.shape\[0\] == 3"),
        "lens shape": (lambda: suf(q, k_pages, v_pages, table, lens[:2]), r"kv_lens must have shape \[3\]"),
        "pages shape": (lambda: suf(q, k_pages, v_pages[:, :8], table, lens), r"k and v must have the same shape"),
        "gqa": (lambda: suf(q[:, :3], k_pages, v_pages, table, lens), r"q_heads \(3\) must be a multiple of kv_heads \(2\)"),
        "seq_to_prefix": (lambda: pre(q, k_pages, v_pages, table, lens), r"seq_to_prefix is required"),
    }


@pytest.mark.parametrize("case", list(bad_calls()))
@pytest.mark.parametrize("fake", [False, True])
def test_bad_shapes(case, fake):
    if fake:  # the same rules at trace time
        mode = FakeTensorMode()
        call, message = bad_calls(mode.from_tensor)[case]
        with mode, pytest.raises(ValueError, match=message):
            call()
    else:
        call, message = bad_calls()[case]
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_values():
    gen = torch.Generator().manual_seed(4)
    k_pages, v_pages, table, lens, _, _ = paged_problem(3, 2, 64, 16, 70, torch.float32, gen)
    q = torch.randn(3, 4, 1, 64, generator=gen)
    bad = table.clone()
    bad[0, 1] = k_pages.shape[0]
    with pytest.raises(ValueError, match=r"block_table\[0, 1\] = \d+ is outside \[0, \d+\)"):
        H.paged_suffix_attention(q, k_pages, v_pages, bad, lens)
    too_long = lens.clone()
    too_long[2] = table.shape[1] * 16 + 1
    with pytest.raises(ValueError, match=r"kv_lens\[2\] = \d+ is outside"):
        H.paged_suffix_attention(q, k_pages, v_pages, table, too_long)

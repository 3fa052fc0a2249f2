"""Concurrent calls from several Python threads give the same bits as calls from one.

Each Python thread that calls an op runs its own OpenMP team with per-thread workspaces;
the workloads below differ in head dim, dtype and path (stacked and few-row prefix
attention, causal suffix, merge, the full composition) so that workspaces are grown and
reused while other threads compute.
"""

import random
from concurrent.futures import ThreadPoolExecutor

import torch

import hydrogen_ops as H

N_THREADS = 8
ROUNDS = 6


def _workloads():
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    q_many = randn(16, 8, 1, 64)
    k_p, v_p = randn(3, 2, 300, 64), randn(3, 2, 300, 64)
    lens_p = torch.tensor([300, 17, 260])
    s2p = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 2])
    q_few = randn(1, 4, 1, 128, dtype=torch.bfloat16)
    k_few, v_few = randn(1, 4, 513, 128, dtype=torch.bfloat16), randn(1, 4, 513, 128, dtype=torch.bfloat16)
    q_suf = randn(4, 8, 3, 80, dtype=torch.float16)
    k_suf, v_suf = randn(4, 2, 100, 80, dtype=torch.float16), randn(4, 2, 100, 80, dtype=torch.float16)
    lens_s = torch.tensor([100, 3, 57, 0])
    outs = [randn(5, 4, 2, 96) for _ in range(3)]
    lses = [randn(5, 4, 2) * 4 for _ in range(3)]
    lses[1][0] = float("-inf")
    q_h = randn(6, 8, 2, 64, dtype=torch.bfloat16)
    k0, v0 = randn(1, 4, 400, 64, dtype=torch.bfloat16), randn(1, 4, 400, 64, dtype=torch.bfloat16)
    k1, v1 = randn(2, 2, 33, 64, dtype=torch.bfloat16), randn(2, 2, 33, 64, dtype=torch.bfloat16)
    ks, vs = randn(6, 8, 9, 64, dtype=torch.bfloat16), randn(6, 8, 9, 64, dtype=torch.bfloat16)
    levels = [(k0, v0, None, None), (k1, v1, torch.tensor([33, 20]), torch.tensor([0, 1, 1, 0, 1, 1]))]
    suffix = (ks, vs, torch.tensor([9, 2, 5, 9, 9, 7]))
    return {
        "prefix_stacked": lambda: H.prefix_attention(q_many, k_p, v_p, lens_p, s2p),
        "prefix_few_rows": lambda: H.prefix_attention(q_few, k_few, v_few),
        "suffix": lambda: H.suffix_attention(q_suf, k_suf, v_suf, lens_s, causal=True),
        "merge": lambda: H.merge_attention(outs, lses),
        "hydragen": lambda: H.hydragen_attention(q_h, levels, suffix, return_lse=True),
    }


def test_concurrent_calls_are_bitwise_equal_to_single_threaded():
    workloads = _workloads()
    expected = {name: fn() for name, fn in workloads.items()}

    def worker(seed):
        order = [name for _ in range(ROUNDS) for name in workloads]
        random.Random(seed).shuffle(order)  # threads run different ops at the same time
        return [(name, workloads[name]()) for name in order]

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(worker, range(N_THREADS)))
    calls = 0
    for per_thread in results:
        for name, (out, lse) in per_thread:
            want_out, want_lse = expected[name]
            assert torch.equal(out, want_out) and torch.equal(lse, want_lse), f"{name} differs under threads"
            calls += 1
    assert calls == N_THREADS * ROUNDS * len(workloads)

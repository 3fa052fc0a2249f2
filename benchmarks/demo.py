"""A short tour of Hydrogen on CPU: many sequences decode against one shared prompt.

Checks that hydragen_attention equals scaled_dot_product_attention over each sequence's
full KV (prefix copied per sequence, as an ordinary KV cache stores it), then times both.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds  # noqa: E402

import hydrogen_ops  # noqa: E402


def main():
    torch.manual_seed(0)
    batch, q_heads, kv_heads, head_dim, prefix, suffix = 32, 16, 4, 128, 2048, 64
    print(f"{batch} sequences share a {prefix}-token prefix and each own {suffix} tokens "
          f"({q_heads} query heads, {kv_heads} KV heads, head_dim {head_dim}, fp32, one decode step)")
    q = torch.randn(batch, q_heads, 1, head_dim)
    kp, vp = (torch.randn(1, kv_heads, prefix, head_dim) for _ in range(2))
    ks, vs = (torch.randn(batch, kv_heads, suffix, head_dim) for _ in range(2))
    k_full = torch.cat([kp.expand(batch, -1, -1, -1), ks], dim=2)
    v_full = torch.cat([vp.expand(batch, -1, -1, -1), vs], dim=2)

    with torch.inference_mode():
        def hydrogen():
            return hydrogen_ops.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))

        def sdpa():
            return F.scaled_dot_product_attention(q, k_full, v_full, enable_gqa=True)

        err = (hydrogen() - sdpa()).abs().max().item()
        t_h, t_s = median_seconds(hydrogen), median_seconds(sdpa)
    kv_bytes_shared = (kp.numel() + vp.numel() + ks.numel() + vs.numel()) * 4
    kv_bytes_expanded = (k_full.numel() + v_full.numel()) * 4
    print(f"max |hydrogen - sdpa| = {err:.2e}")
    print(f"sdpa over expanded KV: {t_s * 1e3:8.2f} ms   KV bytes {kv_bytes_expanded / 2**20:7.1f} MiB")
    print(f"hydrogen             : {t_h * 1e3:8.2f} ms   KV bytes {kv_bytes_shared / 2**20:7.1f} MiB")
    print(f"speedup {t_s / t_h:.1f}x, KV memory {kv_bytes_expanded / kv_bytes_shared:.1f}x smaller "
          f"(median of 10 runs, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

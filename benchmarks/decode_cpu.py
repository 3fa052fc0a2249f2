"""Decode attention with a shared prefix on CPU: Hydrogen against what users have today.

One decode step (Lq = 1) for B sequences that share a prefix and each own a suffix:
  * hydrogen: hydrogen_ops.hydragen_attention (prefix read once for all sequences);
  * sdpa_expanded: F.scaled_dot_product_attention over each sequence's concatenated KV,
    the prefix stored once per sequence (what an unshared KV cache does);
  * torch_composed: the Hydragen algorithm written with stock torch ops (stacked-query
    matmul, softmax and logsumexp for the prefix, the same per sequence for the suffix,
    and the merge in torch): what a user could write without this library.
All three run in the same process on the same inputs; times are medians.

  python benchmarks/decode_cpu.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import gemm_flops_per_second, machine_info, markdown_table, median_seconds, write_json  # noqa: E402

import hydrogen_ops  # noqa: E402


def attention_with_lse(q, k, v, scale):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v), torch.logsumexp(scores, dim=-1)


def torch_composed(q, kp, vp, ks, vs, scale):
    B, Hq, Lq, D = q.shape
    Hkv = kp.shape[1]
    # Prefix: stack every sequence's queries (and the GQA group's heads) per kv head.
    stacked = q.reshape(B, Hkv, Hq // Hkv * Lq, D).transpose(0, 1).reshape(Hkv, -1, D)
    out_p, lse_p = attention_with_lse(stacked, kp[0], vp[0], scale)
    out_p = out_p.reshape(Hkv, B, -1, D).transpose(0, 1).reshape(B, Hq, Lq, D)
    lse_p = lse_p.reshape(Hkv, B, -1).transpose(0, 1).reshape(B, Hq, Lq)
    # Suffix: ordinary per-sequence attention (decode: no mask needed).
    group = Hq // Hkv
    out_s, lse_s = attention_with_lse(q, ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1), scale)
    m = torch.maximum(lse_p, lse_s)
    wp, ws = torch.exp(lse_p - m).unsqueeze(-1), torch.exp(lse_s - m).unsqueeze(-1)
    return (wp * out_p + ws * out_s) / (wp + ws)


def run(batch, heads, kv_heads, head_dim, prefix, suffix, repeats):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim)
    kp, vp = (torch.randn(1, kv_heads, prefix, head_dim) for _ in range(2))
    ks, vs = (torch.randn(batch, kv_heads, suffix, head_dim) for _ in range(2))
    scale = head_dim**-0.5
    k_full = torch.cat([kp.expand(batch, -1, -1, -1), ks], dim=2)
    v_full = torch.cat([vp.expand(batch, -1, -1, -1), vs], dim=2)
    enable_gqa = heads != kv_heads

    def hydrogen():
        return hydrogen_ops.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))

    def sdpa():
        return F.scaled_dot_product_attention(q, k_full, v_full, enable_gqa=enable_gqa)

    def composed():
        return torch_composed(q, kp, vp, ks, vs, scale)

    def prefix_only():
        return hydrogen_ops.prefix_attention(q, kp, vp)

    # The three paths compute the same attention: check before timing.
    ref = sdpa()
    torch.testing.assert_close(hydrogen(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(composed(), ref, rtol=1e-4, atol=1e-4)

    t = {name: median_seconds(fn, repeats=repeats) for name, fn in
         [("hydrogen", hydrogen), ("sdpa_expanded", sdpa), ("torch_composed", composed), ("prefix_only", prefix_only)]}
    prefix_flops = 4 * batch * heads * prefix * head_dim
    return {
        "batch": batch, "q_heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "prefix": prefix, "suffix": suffix,
        "hydrogen_ms": t["hydrogen"] * 1e3, "sdpa_expanded_ms": t["sdpa_expanded"] * 1e3,
        "torch_composed_ms": t["torch_composed"] * 1e3, "prefix_ms": t["prefix_only"] * 1e3,
        "speedup_vs_sdpa": t["sdpa_expanded"] / t["hydrogen"],
        "speedup_vs_composed": t["torch_composed"] / t["hydrogen"],
        "prefix_gflops": prefix_flops / t["prefix_only"] / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller problem, fewer repeats")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    with torch.inference_mode():
        gemm = gemm_flops_per_second()
        if args.quick:
            row = run(16, 16, 16, 128, 1024, 128, repeats=5)
        else:
            row = run(64, 16, 16, 128, 4096, 128, repeats=10)
    row["gemm_gflops"] = gemm / 1e9
    row["prefix_fraction_of_gemm"] = row["prefix_gflops"] * 1e9 / gemm
    print(markdown_table([row], ["batch", "prefix", "suffix", "hydrogen_ms", "sdpa_expanded_ms", "torch_composed_ms",
                                 "speedup_vs_sdpa", "speedup_vs_composed"]))
    print()
    print(f"prefix phase: {row['prefix_gflops']:.1f} GFLOP/s = {100 * row['prefix_fraction_of_gemm']:.0f}% "
          f"of torch.mm 2048x2048 fp32 ({row['gemm_gflops']:.1f} GFLOP/s, same run)")
    if args.out:
        write_json(args.out, {"machine": machine_info(), "results": [row]})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

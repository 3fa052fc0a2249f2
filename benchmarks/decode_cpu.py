"""Decode attention with a shared prefix on CPU, one fixed configuration.

The fixed-configuration entry of benchmarks/attention_sweep.py (which holds the code and
describes the paths): one decode step, fp32, B = 64, 16 heads, D = 128, prefix 4096,
suffix 128, Hydrogen against SDPA over per-sequence expanded KV and against the Hydragen
algorithm composed from stock torch ops, all in one process; it also reports the prefix
phase's GFLOP/s against torch.mm's in the same run.

  python benchmarks/decode_cpu.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_sweep import run  # noqa: E402
from common import gemm_flops_per_second, machine_info, markdown_table, write_json  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller problem, fewer repeats")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    with torch.inference_mode():
        gemm = gemm_flops_per_second()
        if args.quick:
            row = run(16, 16, 16, 128, 1024, 128, repeats=5, prefix_only=True)
        else:
            row = run(64, 16, 16, 128, 4096, 128, repeats=10, prefix_only=True)
    row["sdpa_expanded_ms"] = row["sdpa_ms"]
    row["gemm_gflops"] = gemm / 1e9
    row["prefix_fraction_of_gemm"] = row["prefix_gflops"] * 1e9 / gemm
    print(markdown_table([row], ["batch", "prefix", "suffix", "hydrogen_ms", "sdpa_expanded_ms", "torch_composed_ms",
                                 "speedup_vs_sdpa", "speedup_vs_torch_composed"]))
    print()
    print(f"prefix phase: {row['prefix_gflops']:.1f} GFLOP/s = {100 * row['prefix_fraction_of_gemm']:.0f}% "
          f"of torch.mm 2048x2048 fp32 ({row['gemm_gflops']:.1f} GFLOP/s, same run)")
    if args.out:
        write_json(args.out, {"machine": machine_info(), "results": [row]})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

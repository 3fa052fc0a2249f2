"""The Hydrogen demo: many completions of one long prompt, with and without Hydrogen, on CPU.

A tiny random-weight Llama-shaped model (no download) writes 32 greedy completions of one
prompt, for a few prompt lengths: once with stock transformers generate() (the prompt's KV
copied into every sequence) and once through hydrogen_ops.hf (the prompt's KV stored once,
decode attention split into shared prefix + own suffix). It checks that the tokens are
identical, and reports the decode speedup, the KV memory saved, and a plot of decode
throughput against prompt length with the no-attention ceiling.

  ./benchmarks/demo.sh            # from a fresh clone: set-up + build, then this
  python benchmarks/demo.py [--out-dir bench_results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import busy_warning  # noqa: E402
from hf_generate import (  # noqa: E402
    make_model, model_desc, plot_prefix, short_desc, run_hydrogen, run_no_attention, run_stock, warm_up,
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefixes", type=int, nargs="*", default=[1024, 2048, 4096])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--out-dir", default="bench_results")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    model_args = argparse.Namespace(hidden=512, intermediate=1376, layers=4, heads=8, kv_heads=2, vocab=2048,
                                    dtype="float32", device="cpu")
    model = make_model(model_args, max(args.prefixes) + args.new_tokens + 64)
    B, N = args.batch, args.new_tokens
    print(f"Hydrogen demo: {B} greedy completions of one prompt, {N} new tokens each")
    print(f"model: {model_desc(model)}")
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    busy = busy_warning()
    if busy:
        print(busy + "\n")
    warm_up(model, model_args.vocab)

    rows = []
    print(f"{'prompt':>7} | {'stock tok/s':>11} | {'Hydrogen tok/s':>14} | {'speedup':>7} | "
          f"{'KV stock':>9} | {'KV Hydrogen':>11} | identical")
    for P in args.prefixes:
        torch.manual_seed(P)
        prompt = torch.randint(3, model_args.vocab, (1, P))
        s, s_tok = run_stock(model, [prompt], [B], N)
        h, h_tok = run_hydrogen(model, N, B, prefix=prompt)
        ceiling = run_no_attention(model, N, B, prefix=prompt)
        same = bool(torch.equal(s_tok, h_tok))
        rows.append({"batch": B, "prefix": P, "stock_tok_s": s["tokens_per_s"], "hydrogen_tok_s": h["tokens_per_s"],
                     "no_attention_tok_s": ceiling["tokens_per_s"], "stock_kv": s["kv_bytes"],
                     "hydrogen_kv": h["kv_bytes"], "identical": same})
        print(f"{P:>7} | {s['tokens_per_s']:>11.0f} | {h['tokens_per_s']:>14.0f} | "
              f"{h['tokens_per_s'] / s['tokens_per_s']:>6.1f}x | {s['kv_bytes'] / 2**20:>5.0f} MiB | "
              f"{h['kv_bytes'] / 2**20:>7.0f} MiB | {'yes' if same else 'NO'}", flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.abspath(os.path.join(args.out_dir, "demo.png"))
    plot_prefix(rows, png, f"Hydrogen demo: decode throughput, CPU {torch.get_num_threads()} threads\n"
                           f"{short_desc(model)}, {N} new tokens")
    last = rows[-1]
    all_same = all(r["identical"] for r in rows)
    print()
    print(f"outputs identical: {'yes' if all_same else 'NO'}: Hydrogen and stock generate() wrote the same "
          f"{B} x {N} tokens for every prompt length")
    print(f"speedup: {last['hydrogen_tok_s'] / last['stock_tok_s']:.1f}x decode tokens/s at a {last['prefix']}-token "
          f"prompt ({last['stock_tok_s']:.0f} -> {last['hydrogen_tok_s']:.0f} tok/s; decode time only); the "
          f"no-attention ceiling is {ceiling['tokens_per_s']:.0f} tok/s, Hydrogen reaches "
          f"{100 * last['hydrogen_tok_s'] / ceiling['tokens_per_s']:.0f}% of it")
    print(f"memory saved: KV cache {last['stock_kv'] / 2**20:.0f} MiB -> {last['hydrogen_kv'] / 2**20:.0f} MiB "
          f"({(last['stock_kv'] - last['hydrogen_kv']) / 2**20:.0f} MiB saved, "
          f"{last['stock_kv'] / last['hydrogen_kv']:.1f}x less)")
    print(f"plot: {png}")
    print(f"(demo took {time.perf_counter() - t_start:.0f} s; full benchmarks: benchmarks/RESULTS.md)")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())

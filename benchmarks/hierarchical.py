"""Hierarchical sharing: a few-shot prefix shared by all, one prompt per problem, many samples.

Workload (full mode): a 2,048-token few-shot prefix, 16 problems of 256 tokens each,
16 samples per problem (256 sequences), greedy, on the random-weight Llama-shaped model of
benchmarks/hf_generate.py. Three ways to hold and attend over the prompts:
  * two-level:  stock generate() with hydrogen enabled (it finds the tree by itself): the
                few-shot KV stored once, each problem's KV stored once for its 16 samples,
                each level attended once;
  * one-level:  hydrogen_ops.hf.prepare(max_levels=1): the few-shot block is the shared
                prefix and each problem a per-sequence suffix (problem KV copied per sample);
  * none:       stock generate() over a DynamicCache holding every sequence's whole prompt
                (few-shot + problem copied per sequence; prefilled through cache reuse).
Decode time only (median step, as in hf_generate.py); the no-attention ceiling is the two-level
run with attention replaced by the query. All three must produce identical tokens in fp32.

  python benchmarks/hierarchical.py --quick
  python benchmarks/hierarchical.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bar_pair_plot, busy_warning, machine_info, markdown_table, progress, write_json  # noqa: E402
from hf_generate import (  # noqa: E402
    RESULTS_DIR, add_model_args, best_of, make_model, model_desc, run_hydrogen, run_no_attention, run_stock, stock_kv_bytes,
    token_match, warm_up,
)


TABLE_COLUMNS = ["sharing", "decode tok/s", "ms / step", "two-level speedup", "decode time saved by two-level",
                 "of ceiling", "KV MiB", "same tokens"]


def table_rows(results, steps):
    table = []
    for name in steps:
        r = results[name]
        if "tokens_per_s" not in r:
            table.append({"sharing": name, "decode tok/s": r["note"]})
            continue
        table.append({"sharing": name, "decode tok/s": r["tokens_per_s"], "ms / step": 1e3 * r["median_step_s"],
                      "two-level speedup": r["speedup_of_two_level"],
                      "decode time saved by two-level": f"{100 * r['time_saved_by_two_level']:.0f}%",
                      "of ceiling": f"{100 * r['fraction_of_ceiling']:.0f}%",
                      "KV MiB": f"{r['kv_bytes'] / 2**20:.0f}", "same tokens": f"{100 * r['token_match']:.0f}%"})
    return table


def plot(results, steps, path, title):
    names = [n for n in steps if "tokens_per_s" in results[n]]
    bar_pair_plot(
        path, title, names,
        [results[n]["tokens_per_s"] for n in names], "decode throughput (tokens/s)",
        [results[n]["kv_bytes"] / 2**20 for n in names], "KV cache (MiB)",
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=int, default=2048, help="few-shot prefix tokens")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--problem-len", type=int, default=256)
    p.add_argument("--samples", type=int, default=16, help="samples per problem")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--kv-limit-gb", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=1, help="runs per path; the fastest counts")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    add_model_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.shared, args.problems, args.problem_len, args.samples, args.new_tokens = 512, 4, 64, 8, 10
        args.hidden, args.intermediate, args.layers, args.vocab, args.heads, args.kv_heads = 256, 512, 2, 512, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    model = make_model(args, args.shared + args.problem_len + args.new_tokens + 64)
    warm_up(model, args.vocab)
    g = torch.Generator().manual_seed(2)
    shared = torch.randint(3, args.vocab, (1, args.shared), generator=g).to(args.device)
    problems = torch.randint(3, args.vocab, (args.problems, args.problem_len), generator=g).to(args.device)
    rows = args.problems * args.samples
    results, tokens = {}, {}
    steps = ["two-level", "one-level", "none"]
    for name in progress(steps, desc="hierarchical", unit="path"):
        if name == "two-level":
            r, t = best_of(args.repeats, lambda: run_hydrogen(model, args.new_tokens, args.samples,
                                                              hierarchical=(shared, problems)))
        elif name == "one-level":
            r, t = best_of(args.repeats, lambda: run_hydrogen(model, args.new_tokens, args.samples, prefix=shared,
                                                              suffixes=problems, max_levels=1))
        else:
            need = stock_kv_bytes(model, rows, args.shared + args.problem_len + args.new_tokens)
            if need > args.kv_limit_gb * 1e9:
                results[name] = {"note": f"skipped: KV cache {need / 1e9:.1f} GB > {args.kv_limit_gb:.0f} GB guard"}
                continue
            r, t = best_of(args.repeats, lambda: run_stock(model, [shared, problems], [args.problems, args.samples],
                                                           args.new_tokens))
        results[name], tokens[name] = r, t
    ceiling = best_of(args.repeats, lambda: (run_no_attention(model, args.new_tokens, args.samples,
                                                              hierarchical=(shared, problems)), None))[0]
    ref = tokens["two-level"]
    for name, t in tokens.items():
        results[name]["identical_tokens"] = bool(torch.equal(t, ref))
        results[name]["token_match"] = token_match(t, ref)
        results[name]["fraction_of_ceiling"] = results[name]["tokens_per_s"] / ceiling["tokens_per_s"]
        results[name]["speedup_of_two_level"] = results["two-level"]["tokens_per_s"] / results[name]["tokens_per_s"]
        results[name]["time_saved_by_two_level"] = 1 - results["two-level"]["median_step_s"] / results[name]["median_step_s"]

    info = machine_info(args.device)
    desc = model_desc(model)
    where = info.get("gpu") or f"{info['processor']}, {info['threads']} threads"
    print(f"\n## Hierarchical sharing: {args.shared}-token few-shot prefix, {args.problems} problems x "
          f"{args.problem_len} tokens, {args.samples} samples each ({rows} sequences), {args.new_tokens} new tokens\n"
          f"{desc}; {where}, torch {info['torch']}, {info['date']}; decode time only\n")
    print(markdown_table(table_rows(results, steps), TABLE_COLUMNS))
    if args.device == "cpu" and busy_warning(during_run=True):
        print(busy_warning(during_run=True))
    print(f"\nno-attention ceiling (two-level cache, attention output = query): {ceiling['tokens_per_s']:.0f} tok/s")
    tag = "_quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS_DIR, f"hierarchical_{args.device}{tag}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(out, {"benchmark": "hierarchical", "quick": args.quick,
                     "command": "python benchmarks/hierarchical.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "machine": info, "model": desc, "config": {k: v for k, v in vars(args).items() if k != "out"},
                     "no_attention": ceiling, "results": results})
    png = os.path.splitext(out)[0] + ".png"
    plot(results, steps, png, f"Hierarchical sharing, {where}\n{args.shared}-token few-shot, {args.problems} problems x "
                              f"{args.problem_len} tokens, {args.samples} samples; {desc}")
    print(f"\nwrote {out} and {png}")
    if model.dtype == torch.float32 and not all(r.get("identical_tokens", True) for r in results.values()):
        print("ERROR: the three paths produced different tokens")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

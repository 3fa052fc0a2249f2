"""Decode throughput and KV-cache bytes: hydrogen_ops.hf.generate vs stock generate().

N completions of one prompt (batch B, shared prefix of P tokens) on a random-weight,
Llama-shaped model. Decode time only (as in the Hydragen paper): the clock starts when
the first new token exists, so prefill and the first token are excluded. Both paths run
greedy search on the same model; the script checks they produce identical tokens.

    .venv/bin/python benchmarks/hf_generate.py                 # batch 16, 2048-token prefix
    .venv/bin/python benchmarks/hf_generate.py --quick         # a few seconds
    .venv/bin/python benchmarks/hf_generate.py --out bench_results/hf_generate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


class _Clock:
    """A StoppingCriteria that stamps the time of every decoding step (never stops)."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def make_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.prefix + args.new_tokens + 64,
        initializer_range=0.2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype)).eval()
    model.set_attn_implementation("sdpa")
    return model


def run(model, prompt, args, hydrogen: bool):
    import hydrogen_ops.hf as hf
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    clock = _Clock()
    kw = dict(
        max_new_tokens=args.new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        return_dict_in_generate=True,
        stopping_criteria=StoppingCriteriaList([clock]),
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        if hydrogen:
            out = hf.generate(model, prompt, num_return_sequences=args.batch, **kw)
            kv = out.past_key_values.kv_bytes()["total"]
        else:
            out = model.generate(prompt.repeat(args.batch, 1), **kw)
            cache = out.past_key_values
            kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    t_end = time.perf_counter()
    steps = len(clock.stamps) - 1  # decode steps after the first token
    decode_s = clock.stamps[-1] - clock.stamps[0]
    return {
        "tokens_per_s": args.batch * steps / decode_s,
        "decode_s": decode_s,
        "time_to_first_token_s": clock.stamps[0] - t0,
        "total_s": t_end - t0,
        "kv_bytes": kv,
        "sequences": out.sequences,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prefix", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=2, help="timed runs per path (best is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--quick", action="store_true", help="small sizes, seconds")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.batch, args.prefix, args.new_tokens, args.repeats = 4, 256, 16, 2
        args.hidden, args.intermediate, args.layers, args.vocab = 128, 256, 2, 256
        args.heads, args.kv_heads = 4, 4
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    model = make_model(args)
    torch.manual_seed(1)
    prompt = torch.randint(3, args.vocab, (1, args.prefix))

    # warm-up (kernels, allocator), short
    warm = argparse.Namespace(**{**vars(args), "new_tokens": 2})
    run(model, prompt[:, : min(64, args.prefix)], warm, True)
    run(model, prompt[:, : min(64, args.prefix)], warm, False)

    results = {}
    for name, hyd in (("stock_sdpa", False), ("hydrogen", True)):
        best = None
        for _ in range(args.repeats):
            r = run(model, prompt, args, hyd)
            if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                best = r
        results[name] = best
    same = torch.equal(results["stock_sdpa"].pop("sequences"), results["hydrogen"].pop("sequences"))

    s, h = results["stock_sdpa"], results["hydrogen"]
    summary = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "identical_tokens": same,
        "stock_sdpa": s,
        "hydrogen": h,
        "speedup": h["tokens_per_s"] / s["tokens_per_s"],
        "kv_bytes_saved": s["kv_bytes"] - h["kv_bytes"],
        "kv_ratio": s["kv_bytes"] / h["kv_bytes"],
    }
    mib = 1 / 2**20
    print(
        f"batch {args.batch}, prefix {args.prefix}, {args.new_tokens} new tokens, Llama-shaped {args.layers}x"
        f"{args.hidden} ({args.heads} heads, {args.kv_heads} KV heads), {args.dtype}, "
        f"{torch.get_num_threads()} threads, transformers {transformers.__version__}\n"
    )
    print("| path | decode tok/s | time to 1st token (s) | KV cache (MiB) |")
    print("|---|---:|---:|---:|")
    for name, r in (("stock generate (sdpa)", s), ("hydrogen_ops.hf.generate", h)):
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['time_to_first_token_s']:.2f} | {r['kv_bytes'] * mib:.1f} |")
    print(
        f"\nspeedup {summary['speedup']:.2f}x, KV bytes saved {summary['kv_bytes_saved']} "
        f"({summary['kv_bytes_saved'] * mib:.1f} MiB, {summary['kv_ratio']:.1f}x less), identical tokens: {same}"
    )
    print(json.dumps(summary))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()

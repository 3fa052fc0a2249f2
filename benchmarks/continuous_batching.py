"""Continuous batching: paged|hydrogen against paged|sdpa in transformers' own engine.

Workload (full mode): 64 requests arriving as a Poisson stream, all sharing a 2,048-token
system prompt; 8 groups of them also share a 512-token document; each ends with its own
32-token question and decodes 32 tokens greedily. The requests go to a
ContinuousBatchingManager (requests join while others decode; the engine reuses the cached
blocks of the shared prompt and document), once with attn_implementation="paged|sdpa" and once
with "paged|hydrogen", on the random-weight Llama-shaped model of benchmarks/hf_generate.py.

Reported per implementation:
  * decode tok/s at full concurrency: requests / median time of the decode-only engine steps
    that ran with every request decoding (the headline);
  * decode tok/s over all decode-only steps, median time per output token (TPOT, from the
    engine's per-token timestamps), wall time;
  * KV blocks used (peak), against the blocks the requests would need without shared blocks;
  * whether the greedy tokens are identical to paged|sdpa's.
Step times are medians over many steps; the machine may be shared, so expect noise. On a busy
CPU, --threads 1 avoids OpenMP threads waiting for one another (each parallel region then
waits for a descheduled thread), which otherwise adds a large per-step floor to both paths.

  python benchmarks/continuous_batching.py --quick
  python benchmarks/continuous_batching.py
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import textwrap
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import bar_pair_plot, busy_warning, machine_info, markdown_table, progress, write_json  # noqa: E402
from hf_generate import RESULTS_DIR, add_model_args, make_model, model_desc  # noqa: E402

IMPLEMENTATIONS = ("paged|sdpa", "paged|hydrogen")
TABLE_COLUMNS = ["implementation", "decode tok/s (all decoding)", "ms / step", "speedup", "decode tok/s (all steps)",
                 "TPOT ms", "wall s", "peak KV blocks", "blocks unshared", "same tokens"]


def workload(args):
    """Prompts (system + document of its group + own question) and Poisson arrival offsets (s)."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, args.vocab, (n,), generator=g).tolist()

    system = ids(args.shared)
    docs = [ids(args.doc_len) for _ in range(args.groups)]
    prompts = [system + docs[i % args.groups] + ids(args.question_len) for i in range(args.requests)]
    gaps = torch.empty(args.requests).exponential_(args.rate, generator=g)
    gaps[0] = 0.0
    return prompts, torch.cumsum(gaps, 0).tolist()


class StepRecorder:
    """Wraps model.forward: wall time of every engine step, how many requests decoded in it,
    how many prefill tokens it carried, and the paged cache's blocks in use."""

    def __init__(self, model):
        self.model = model
        self.steps = []
        self.peak_blocks = 0
        self._forward = model.forward

    def __enter__(self):
        def timed_forward(*args, **kwargs):
            cu_q = kwargs.get("cu_seq_lens_q")
            q_lens = (cu_q[1:] - cu_q[:-1]).tolist() if cu_q is not None else []
            cache = kwargs.get("cache")
            if cache is not None:
                self.peak_blocks = max(self.peak_blocks, cache.num_blocks - cache.get_num_free_blocks())
            start = time.perf_counter()
            out = self._forward(*args, **kwargs)
            self.steps.append({"seconds": time.perf_counter() - start, "decoding": sum(1 for n in q_lens if n == 1),
                               "prefill_tokens": sum(n for n in q_lens if n > 1)})
            return out

        self.model.forward = timed_forward
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class method


def request_bar(total, impl):
    """A tqdm bar of finished requests (on stderr), or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"{impl:>15}", unit="req", leave=False)


def run(model, impl, prompts, arrivals, args):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    model.set_attn_implementation(impl)
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    per_request = math.ceil((len(prompts[0]) + args.new_tokens) / args.block_size)
    cbc = ContinuousBatchingConfig(block_size=args.block_size, num_blocks=per_request * len(prompts) + 8,
                                   max_batch_tokens=args.max_batch_tokens, max_requests_per_batch=len(prompts))
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cbc)
    outputs = {}
    with StepRecorder(model) as recorder:
        manager.start()
        t0 = time.perf_counter()
        try:
            bar = request_bar(len(prompts), impl)
            for i, (prompt, at) in enumerate(zip(prompts, arrivals)):
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                manager.add_request(prompt, request_id=f"r{i}", record_timestamps=True)
            while len(outputs) < len(prompts):
                result = manager.get_result(timeout=600)
                if result is None:
                    raise RuntimeError(f"{impl}: the engine stopped before all requests finished")
                if result.error:
                    raise RuntimeError(f"{impl}: request {result.request_id} failed: {result.error}")
                outputs[result.request_id] = result
                if bar is not None:
                    bar.update(1)
            wall = time.perf_counter() - t0
        finally:
            manager.stop(block=True, timeout=60)
    if bar is not None:
        bar.close()
    return summarize(recorder, outputs, wall, len(prompts), per_request)


def summarize(recorder, outputs, wall, num_requests, blocks_per_request):
    decode_only = [s for s in recorder.steps if s["decoding"] and not s["prefill_tokens"]]
    full = [s["seconds"] for s in decode_only if s["decoding"] == num_requests]
    tpots = []
    for o in outputs.values():
        ts = o.timestamps or []
        if len(ts) > 1:
            tpots.append((ts[-1] - ts[0]) / (len(ts) - 1))
    row = {
        "tokens": {rid: list(o.generated_tokens) for rid, o in outputs.items()},
        "wall_s": wall,
        "steps": len(recorder.steps),
        "decode_only_steps": len(decode_only),
        "decode_tok_s_all_steps": (sum(s["decoding"] for s in decode_only) / sum(s["seconds"] for s in decode_only)
                                   if decode_only else None),
        "tpot_median_s": statistics.median(tpots) if tpots else None,
        "peak_kv_blocks": recorder.peak_blocks,
        "kv_blocks_without_sharing": blocks_per_request * num_requests,
        "full_concurrency_steps": len(full),
    }
    if full:
        row["median_step_s_all_decoding"] = statistics.median(full)
        row["decode_tok_s_all_decoding"] = num_requests / row["median_step_s_all_decoding"]
    return row


def plot(results, path, title):
    names = [n for n in IMPLEMENTATIONS if n in results]
    bar_pair_plot(
        path, title, names,
        [results[n].get("decode_tok_s_all_decoding") or 0 for n in names], "decode tok/s, all requests decoding",
        [1e3 * (results[n]["tpot_median_s"] or 0) for n in names], "median time per output token (ms)",
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--shared", type=int, default=2048, help="system-prompt tokens shared by all requests")
    p.add_argument("--groups", type=int, default=8, help="documents, each shared by one group of requests")
    p.add_argument("--doc-len", type=int, default=512)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rate", type=float, default=64.0, help="Poisson arrival rate (requests/s)")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--max-batch-tokens", type=int, default=512)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    add_model_args(p, hidden=512, intermediate=1408, layers=2, heads=8, kv_heads=2, vocab=2048)
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.shared, args.groups, args.doc_len, args.question_len = 16, 256, 4, 64, 8
        args.new_tokens, args.block_size, args.max_batch_tokens, args.rate = 8, 16, 256, 1000.0
    if args.device != "cpu":
        raise SystemExit("continuous_batching.py measures the CPU path (paged|hydrogen reads pages with torch indexing)")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    import hydrogen_ops.hf  # noqa: F401  (registers paged|hydrogen)

    transformers.logging.set_verbosity_error()
    warning = busy_warning()
    if warning:
        print(warning)
    prompts, arrivals = workload(args)
    model = make_model(args, max_positions=len(prompts[0]) + args.new_tokens + 16)
    results = {}
    with torch.inference_mode():
        for impl in progress(IMPLEMENTATIONS, desc="implementations"):
            results[impl] = run(model, impl, prompts, arrivals, args)
    base = results["paged|sdpa"]
    for r in results.values():
        r["identical_tokens"] = r["tokens"] == base["tokens"]
        if r.get("decode_tok_s_all_decoding") and base.get("decode_tok_s_all_decoding"):
            r["speedup_all_decoding"] = r["decode_tok_s_all_decoding"] / base["decode_tok_s_all_decoding"]
    during = busy_warning(during_run=True)
    where = (f"{args.requests} requests (Poisson, {args.rate:g}/s), {args.shared}-token shared prompt, "
             f"{args.groups} documents of {args.doc_len}, {args.question_len}-token questions, "
             f"{args.new_tokens} new tokens, block {args.block_size}")
    table = [{"implementation": n.replace("|", "\\|"), "decode tok/s (all decoding)": r.get("decode_tok_s_all_decoding", "none"),
              "ms / step": 1e3 * r["median_step_s_all_decoding"] if "median_step_s_all_decoding" in r else "",
              "speedup": r.get("speedup_all_decoding", ""), "decode tok/s (all steps)": r["decode_tok_s_all_steps"],
              "TPOT ms": 1e3 * r["tpot_median_s"] if r["tpot_median_s"] else "", "wall s": r["wall_s"],
              "peak KV blocks": r["peak_kv_blocks"], "blocks unshared": r["kv_blocks_without_sharing"],
              "same tokens": r["identical_tokens"]} for n, r in results.items()]
    print(f"\n{where}\n{model_desc(model)}\n")
    print(markdown_table(table, TABLE_COLUMNS))
    if during:
        print(during)
    tag = "_quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS_DIR, f"continuous_batching_cpu{tag}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot(results, os.path.splitext(out)[0] + ".png",
         "Continuous batching: " + textwrap.fill(where, 100) + "\n" + model_desc(model))
    for r in results.values():
        r["tokens"] = {k: r["tokens"][k] for k in sorted(r["tokens"])[:2]}  # a sample; equality is recorded
    write_json(out, {"benchmark": "continuous_batching", "quick": args.quick, "workload": where,
                     "command": "python benchmarks/continuous_batching.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "model": model_desc(model), "machine": machine_info(), "busy_warning": during or warning,
                     "results": results,
                     "headline": {"speedup_all_decoding": results["paged|hydrogen"].get("speedup_all_decoding"),
                                  "identical_tokens": results["paged|hydrogen"]["identical_tokens"]}})
    return 0 if results["paged|hydrogen"]["identical_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())

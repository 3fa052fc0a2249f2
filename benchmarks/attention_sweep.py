"""Decode attention with a shared prefix: Hydrogen against the baselines, over a sweep.

One decode step (Lq = 1) for B sequences that share a P-token prefix and each own a
128-token suffix (16 query heads, 16 KV heads, head_dim 128; fp32 on CPU, bf16 on CUDA):
  * hydrogen:       hydrogen_ops.hydragen_attention (prefix read once for all sequences);
  * sdpa:           F.scaled_dot_product_attention over each sequence's [prefix | suffix] KV,
                    the prefix stored once per sequence (an unshared KV cache). At batch 1
                    this is plain SDPA, the single-sequence baseline;
  * flex:           FlexAttention (torch.compile) with a shared-prefix block mask: the batch
                    folded into the query length, KV = [prefix | suffix 0 | suffix 1 | ...],
                    each query sees the prefix and its own suffix only;
  * torch_composed: the Hydragen algorithm written with stock torch ops (what a user could
                    write without this library).
All paths run in the same process on the same inputs and are checked against SDPA before
timing. Times are medians after warm-up (CUDA events on a GPU). Rows whose expanded KV
would not fit the memory guard are reported as skipped, with the reason.

  python benchmarks/attention_sweep.py --quick           # < 1 minute on 2 CPU cores
  python benchmarks/attention_sweep.py                   # CPU: B 1..256 x P 256..16384
  python benchmarks/attention_sweep.py --device cuda     # CUDA: B 1..1024 x P 256..16384
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import busy_warning, machine_info, markdown_table, progress, pyplot, median_seconds, write_json  # noqa: E402

import hydrogen_ops  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GRIDS = {
    ("cpu", True): ([1, 4, 16, 64], [256, 1024, 4096]),
    ("cpu", False): ([1, 4, 16, 64, 256], [256, 1024, 4096, 16384]),
    ("cuda", True): ([1, 16, 256], [1024, 4096]),
    ("cuda", False): ([1, 4, 16, 64, 256, 1024], [256, 1024, 4096, 16384]),
}


def attention_with_lse(q, k, v, scale):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v), torch.logsumexp(scores, dim=-1)


def torch_composed(q, kp, vp, ks, vs, scale):
    """Hydragen with stock torch ops: stacked-query prefix attention, per-sequence suffix, merge."""
    B, Hq, Lq, D = q.shape
    Hkv = kp.shape[1]
    stacked = q.reshape(B, Hkv, Hq // Hkv * Lq, D).transpose(0, 1).reshape(Hkv, -1, D)
    out_p, lse_p = attention_with_lse(stacked, kp[0], vp[0], scale)
    out_p = out_p.reshape(Hkv, B, -1, D).transpose(0, 1).reshape(B, Hq, Lq, D)
    lse_p = lse_p.reshape(Hkv, B, -1).transpose(0, 1).reshape(B, Hq, Lq)
    group = Hq // Hkv
    out_s, lse_s = attention_with_lse(q, ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1), scale)
    m = torch.maximum(lse_p, lse_s)
    wp, ws = torch.exp(lse_p - m).unsqueeze(-1), torch.exp(lse_s - m).unsqueeze(-1)
    return ((wp * out_p + ws * out_s) / (wp + ws)).to(q.dtype)


_FLEX = {}


def flex_shared_prefix(q, kp, vp, ks, vs):
    """FlexAttention over [prefix | all suffixes] with a block mask: prefix shared, own suffix only."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    B, Hq, _, D = q.shape
    Hkv, P, S = kp.shape[1], kp.shape[2], ks.shape[2]

    def mask_mod(b, h, qi, kv):
        return (kv < P) | ((kv - P) // S == qi)

    bm = create_block_mask(mask_mod, 1, None, B, P + B * S, device=q.device.type)
    k = torch.cat([kp[0], ks.transpose(0, 1).reshape(Hkv, B * S, D)], 1)[None]
    v = torch.cat([vp[0], vs.transpose(0, 1).reshape(Hkv, B * S, D)], 1)[None]
    qq = q.transpose(0, 2).reshape(1, Hq, B, D)  # [B, H, 1, D] -> [1, H, B, D]

    def run():
        out = _FLEX["fn"](qq, k, v, block_mask=bm, enable_gqa=Hq != Hkv)
        return out.transpose(0, 2).reshape(B, Hq, 1, D)

    return run


def make_inputs(batch, heads, kv_heads, head_dim, prefix, suffix, device, dtype, seed=0):
    # drawn on the device itself: the largest CUDA rows hold gigabytes, slow to draw on a CPU
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    q = rnd(batch, heads, 1, head_dim)
    kp, vp = rnd(1, kv_heads, prefix, head_dim), rnd(1, kv_heads, prefix, head_dim)
    ks, vs = rnd(batch, kv_heads, suffix, head_dim), rnd(batch, kv_heads, suffix, head_dim)
    return q, kp, vp, ks, vs


def expanded_kv_bytes(batch, kv_heads, head_dim, prefix, suffix, dtype):
    return 2 * batch * kv_heads * (prefix + suffix) * head_dim * torch.tensor([], dtype=dtype).element_size()


def shared_kv_bytes(batch, kv_heads, head_dim, prefix, suffix, dtype):
    return 2 * kv_heads * (prefix + batch * suffix) * head_dim * torch.tensor([], dtype=dtype).element_size()


def run(batch, heads, kv_heads, head_dim, prefix, suffix, *, repeats=10, warmup=3, device="cpu",
        dtype=torch.float32, flex=False, composed=True, prefix_only=False, kv_limit_bytes=8e9, budget_s=None):
    """Times one (batch, prefix) row; returns a dict. Paths that cannot run say why in `*_note`."""
    q, kp, vp, ks, vs = make_inputs(batch, heads, kv_heads, head_dim, prefix, suffix, device, dtype)
    scale = head_dim**-0.5
    row = {"batch": batch, "prefix": prefix, "suffix": suffix, "q_heads": heads, "kv_heads": kv_heads,
           "head_dim": head_dim, "dtype": str(dtype).replace("torch.", ""),
           "kv_bytes_expanded": expanded_kv_bytes(batch, kv_heads, head_dim, prefix, suffix, dtype),
           "kv_bytes_shared": shared_kv_bytes(batch, kv_heads, head_dim, prefix, suffix, dtype)}
    tol = 1e-4 if dtype == torch.float32 else 2e-2

    def hydrogen():
        return hydrogen_ops.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))

    def timed(fn):
        t1 = median_seconds(fn, warmup=1, repeats=1, device=device)  # also the first warm-up
        reps = repeats
        if budget_s is not None and t1 * (warmup + repeats) > budget_s:
            reps = max(3, int(budget_s / max(t1, 1e-9)) - 1)
        return median_seconds(fn, warmup=max(0, warmup - 1) if reps == repeats else 1, repeats=reps, device=device)

    ref = None
    if row["kv_bytes_expanded"] > kv_limit_bytes:
        row["sdpa_note"] = (f"skipped: expanded KV {row['kv_bytes_expanded'] / 1e9:.1f} GB > "
                            f"{kv_limit_bytes / 1e9:.0f} GB guard")
    else:
        k_full = torch.cat([kp.expand(batch, -1, -1, -1), ks], dim=2)
        v_full = torch.cat([vp.expand(batch, -1, -1, -1), vs], dim=2)

        def sdpa():
            return F.scaled_dot_product_attention(q, k_full, v_full, enable_gqa=heads != kv_heads)

        ref = sdpa()
        row["sdpa_ms"] = timed(sdpa) * 1e3
        del k_full, v_full
    if ref is None:  # reference from the composed path (its own correctness is checked on small rows)
        ref = torch_composed(q.float(), kp.float(), vp.float(), ks.float(), vs.float(), scale).to(dtype)
    torch.testing.assert_close(hydrogen(), ref, rtol=tol, atol=tol)
    row["hydrogen_ms"] = timed(hydrogen) * 1e3
    if prefix_only:
        t = timed(lambda: hydrogen_ops.prefix_attention(q, kp, vp)) * 1e3
        row["prefix_ms"] = t
        row["prefix_gflops"] = 4 * batch * heads * prefix * head_dim / (t * 1e-3) / 1e9
    if composed:
        comp = lambda: torch_composed(q, kp, vp, ks, vs, scale)  # noqa: E731
        torch.testing.assert_close(comp(), ref, rtol=tol, atol=tol)
        row["torch_composed_ms"] = timed(comp) * 1e3
    if flex:
        try:
            fx = flex_shared_prefix(q, kp, vp, ks, vs)
            torch.testing.assert_close(fx(), ref, rtol=tol, atol=tol)
            row["flex_ms"] = timed(fx) * 1e3
        except Exception as e:  # noqa: BLE001
            row["flex_note"] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    else:
        row["flex_note"] = "not run"
    for name in ("sdpa", "flex", "torch_composed"):
        if f"{name}_ms" in row:
            row[f"speedup_vs_{name}"] = row[f"{name}_ms"] / row["hydrogen_ms"]
    return row


WIN = 1.05  # a "win" must beat SDPA by more than the run-to-run noise (5%)


def headline(rows):
    """Best speedup over SDPA, and where Hydrogen starts to win: per prefix, the smallest batch
    from which it beats SDPA by more than 5% at that batch and every larger one timed."""
    timed = [r for r in rows if "speedup_vs_sdpa" in r]
    if not timed:
        return {}
    best = max(timed, key=lambda r: r["speedup_vs_sdpa"])
    out = {"best_speedup_vs_sdpa": best["speedup_vs_sdpa"], "best_at": {"batch": best["batch"], "prefix": best["prefix"]},
           "win_margin": WIN, "crossover_batch_by_prefix": {}}
    firsts = []
    for p in sorted({r["prefix"] for r in timed}):
        col = sorted((r for r in timed if r["prefix"] == p), key=lambda r: r["batch"])
        cross = None
        for i, r in enumerate(col):
            if all(c["speedup_vs_sdpa"] > WIN for c in col[i:]):
                cross = r
                break
        out["crossover_batch_by_prefix"][str(p)] = cross["batch"] if cross else None
        if cross:
            firsts.append(cross)
    if firsts:
        fw = min(firsts, key=lambda r: (r["batch"], r["prefix"]))
        out["first_win"] = {"batch": fw["batch"], "prefix": fw["prefix"], "speedup_vs_sdpa": fw["speedup_vs_sdpa"]}
    return out


def table_rows(rows):
    out = []
    for r in rows:
        t = {k: r[k] for k in ("batch", "prefix")}
        t["hydrogen ms"] = r.get("hydrogen_ms", r.get("error", "n/a"))
        t["SDPA ms"] = r.get("sdpa_ms", r.get("sdpa_note", "n/a"))
        t["flex ms"] = r.get("flex_ms", r.get("flex_note", "n/a"))
        t["composed ms"] = r.get("torch_composed_ms", "n/a")
        t["x SDPA"] = r.get("speedup_vs_sdpa", "n/a")
        t["x flex"] = r.get("speedup_vs_flex", "n/a")
        if "kv_bytes_expanded" in r:
            t["KV MB expanded / shared"] = f"{r['kv_bytes_expanded'] / 1e6:.0f} / {r['kv_bytes_shared'] / 1e6:.0f}"
        out.append(t)
    return out


TABLE_COLUMNS = ["batch", "prefix", "hydrogen ms", "SDPA ms", "flex ms", "composed ms", "x SDPA", "x flex",
                 "KV MB expanded / shared"]


def plot(rows, path, title):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for p in sorted({r["prefix"] for r in rows}):
        pts = [(r["batch"], r["speedup_vs_sdpa"]) for r in rows if r["prefix"] == p and "speedup_vs_sdpa" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"prefix {p}")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xticks(sorted({r["batch"] for r in rows}))
    ax.set_xlabel("batch size (sequences sharing the prefix)")
    ax.set_ylabel("speedup over SDPA on expanded KV")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, few repeats (< 1 minute on CPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", type=int, nargs="*", help="override the batch sizes")
    ap.add_argument("--prefixes", type=int, nargs="*", help="override the prefix lengths")
    ap.add_argument("--suffix", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--flex", action=argparse.BooleanOptionalAction, default=None,
                    help="time FlexAttention (torch.compile; default: on in full mode, off with --quick)")
    ap.add_argument("--composed", action=argparse.BooleanOptionalAction, default=True,
                    help="time Hydragen composed from stock torch ops (default: on)")
    ap.add_argument("--kv-limit-gb", type=float, default=None, help="memory guard for the expanded KV (default 8 on CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attention_sweep_<device>[_quick].json)")
    ap.add_argument("--plot", default=None, help="PNG path (default next to the JSON)")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("attention_sweep.py: no CUDA GPU")
        return 0
    batches, prefixes = GRIDS[(args.device, args.quick)]
    batches, prefixes = args.batches or batches, args.prefixes or prefixes
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    flex = (not args.quick) if args.flex is None else args.flex
    if args.kv_limit_gb is not None:
        kv_limit = args.kv_limit_gb * 1e9
    elif args.device == "cpu":
        kv_limit = 8e9
    else:
        kv_limit = 0.4 * torch.cuda.mem_get_info()[0]
    repeats, warmup = (3, 1) if args.quick else (10, 3)
    budget = 2.0 if args.quick else 6.0  # seconds per timed path; slow rows get fewer repeats (>= 3)
    suffix_tag = "_quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS_DIR, f"attention_sweep_{args.device}{suffix_tag}.json")
    png = args.plot or os.path.splitext(out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    rows = []
    grid = [(b, p) for p in prefixes for b in batches]
    desc = (f"decode, {str(dtype).replace('torch.', '')}, {args.heads} q heads / {args.kv_heads} KV heads, "
            f"head_dim {args.head_dim}, suffix {args.suffix}")
    command = "python benchmarks/attention_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def payload(complete):
        return {"benchmark": "attention_sweep", "device": args.device, "quick": args.quick, "command": command,
                "machine": machine_info(args.device), "config": desc, "complete": complete,
                "rows_planned": len(grid), "headline": headline(rows), "results": rows}

    with torch.inference_mode():
        for b, p in progress(grid, desc=f"attention sweep ({args.device})", unit="row"):
            try:
                rows.append(run(b, args.heads, args.kv_heads, args.head_dim, p, args.suffix, repeats=repeats,
                                warmup=warmup, device=args.device, dtype=dtype, flex=flex, composed=args.composed,
                                kv_limit_bytes=kv_limit, budget_s=budget))
            except Exception as e:  # noqa: BLE001  (one failing row must not lose the others)
                rows.append({"batch": b, "prefix": p, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            if args.device == "cuda":
                torch.cuda.empty_cache()
            # rows written so far survive a run that is cut off
            write_json(out, payload(complete=False))
    info = machine_info(args.device)
    head = headline(rows)
    where = info.get("gpu") or f"{info['processor']}, {info['threads']} threads"
    print(f"\n## Hydrogen vs SDPA on expanded KV ({desc})\n{where}, torch {info['torch']}, {info['date']}\n")
    print(markdown_table(table_rows(rows), TABLE_COLUMNS))
    if args.device == "cpu" and busy_warning(during_run=True):
        print(busy_warning(during_run=True))
    if head:
        print(f"\nbest speedup over SDPA: {head['best_speedup_vs_sdpa']:.1f}x at batch {head['best_at']['batch']}, "
              f"prefix {head['best_at']['prefix']}")
        if "first_win" in head:
            fw = head["first_win"]
            print(f"Hydrogen first beats SDPA (by > 5%, and at every larger batch) at batch {fw['batch']}, prefix {fw['prefix']} ({fw['speedup_vs_sdpa']:.2f}x); "
                  f"smallest winning batch per prefix: {head['crossover_batch_by_prefix']}")
    title = f"Hydrogen decode speedup, {where}\n{desc}"
    plot(rows, png, title)
    write_json(out, payload(complete=True))
    print(f"\nwrote {out} and {png}")
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"error at batch {r['batch']}, prefix {r['prefix']}: {r['error']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

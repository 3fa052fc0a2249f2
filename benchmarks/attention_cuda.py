"""CUDA micro-benchmarks of Hydragen decode attention (hydrogen_ops) against baselines.

Decode, bf16, Hq = 32, Hkv in {8, 32}, D = 128, suffix 128 tokens per sequence,
(batch, prefix) in (64, 2048), (256, 4096), (1024, 16384). For each row:
  * ours:        hydrogen_ops.hydragen_attention (prefix + suffix + merge), and the prefix
                 and suffix ops alone (prefix TFLOP/s against a measured bf16 torch.mm rate,
                 suffix GB/s against a measured device-to-device copy);
  * sdpa:        F.scaled_dot_product_attention over per-sequence concatenated KV
                 [B, Hkv, prefix + suffix, D] (the prefix stored once per sequence);
  * flash-hyd:   aten._scaled_dot_product_flash_attention used Hydragen-style (all queries
                 of a kv head stacked against the prefix, per-sequence suffix), merged with
                 hydrogen_ops.merge_attention.
Then the suffix op alone at batch 256 and 1024, suffix 128, 512 and 1024 tokens (GB/s
against the device-to-device copy). The JSON is rewritten after every row, so a run that is
cut off keeps what it measured.
Usage: python benchmarks/attention_cuda.py [--quick] [--out results.json]
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import hydrogen_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_seconds  # noqa: E402

HQ, D, SUFFIX = 32, 128, 128
ROWS = [(64, 2048), (256, 4096), (1024, 16384)]
SUFFIX_GRID = [(hkv, B, s) for hkv in (8, 32) for B in (256, 1024) for s in (128, 512, 1024)]
SUFFIX_GRID_QUICK = [(8, 256, 128), (8, 256, 1024)]


def time_ms(fn, warmup, repeats):
    return median_seconds(fn, warmup=warmup, repeats=repeats, device="cuda") * 1e3


def mm_tflops(n, warmup, repeats):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: torch.mm(a, b), warmup, repeats)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(nbytes, warmup, repeats):
    src = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), warmup, repeats)
    return 2 * nbytes / (ms * 1e-3) / 1e9  # read + write


def suffix_bytes(q, ks):
    """HBM bytes one decode suffix call must move: K and V, q, the float32 out and lse."""
    B, hq, lq, d = q.shape
    return 2 * ks.numel() * ks.element_size() + q.numel() * q.element_size() + B * hq * lq * (d * 4 + 4)


def bench_suffix(B, suffix, hkv, warmup, repeats):
    """The suffix op alone: a memory-bound read of every sequence's own K/V."""
    dt = torch.bfloat16
    q = torch.randn(B, HQ, 1, D, device="cuda", dtype=dt)
    ks = torch.randn(B, hkv, suffix, D, device="cuda", dtype=dt)
    vs = torch.randn(B, hkv, suffix, D, device="cuda", dtype=dt)
    ms = time_ms(lambda: hydrogen_ops.suffix_attention(q, ks, vs, out_dtype=torch.float32), warmup, repeats)
    return {"batch": B, "suffix": suffix, "q_heads": HQ, "kv_heads": hkv, "head_dim": D, "suffix_ms": ms,
            "suffix_gbps": suffix_bytes(q, ks) / (ms * 1e-3) / 1e9}


def flash_lse(q, k, v):
    """(out, lse) of aten._scaled_dot_product_flash_attention, non-causal."""
    res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)
    return res[0], res[1]


def bench_row(B, prefix, hkv, warmup, repeats):
    G = HQ // hkv
    dt = torch.bfloat16
    row = {"batch": B, "prefix": prefix, "suffix": SUFFIX, "q_heads": HQ, "kv_heads": hkv, "head_dim": D}
    q = torch.randn(B, HQ, 1, D, device="cuda", dtype=dt)
    kp = torch.randn(1, hkv, prefix, D, device="cuda", dtype=dt)
    vp = torch.randn(1, hkv, prefix, D, device="cuda", dtype=dt)
    ks = torch.randn(B, hkv, SUFFIX, D, device="cuda", dtype=dt)
    vs = torch.randn(B, hkv, SUFFIX, D, device="cuda", dtype=dt)

    ours = lambda: hydrogen_ops.hydragen_attention(q, [(kp, vp, None, None)], (ks, vs, None))  # noqa: E731
    row["ours_ms"] = time_ms(ours, warmup, repeats)
    row["prefix_ms"] = time_ms(
        lambda: hydrogen_ops.prefix_attention(q, kp, vp, out_dtype=torch.float32), warmup, repeats)
    row["suffix_ms"] = time_ms(
        lambda: hydrogen_ops.suffix_attention(q, ks, vs, out_dtype=torch.float32), warmup, repeats)
    row["prefix_tflops"] = 4 * B * HQ * prefix * D / (row["prefix_ms"] * 1e-3) / 1e12
    row["suffix_gbps"] = suffix_bytes(q, ks) / (row["suffix_ms"] * 1e-3) / 1e9

    # (a) SDPA over the concatenated per-sequence KV.
    need = 2 * B * hkv * (prefix + SUFFIX) * D * 2
    free, _ = torch.cuda.mem_get_info()
    if need > 0.8 * free:
        row["sdpa_ms"] = None
        row["sdpa_note"] = f"concatenated KV needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free: not run"
    else:
        try:
            kc = torch.cat([kp.expand(B, -1, -1, -1), ks], dim=2)
            vc = torch.cat([vp.expand(B, -1, -1, -1), vs], dim=2)
            try:
                F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)
                sdpa = lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)  # noqa: E731
                row["sdpa_note"] = "enable_gqa=True"
            except TypeError:
                kr, vr = kc.repeat_interleave(G, dim=1), vc.repeat_interleave(G, dim=1)
                sdpa = lambda: F.scaled_dot_product_attention(q, kr, vr)  # noqa: E731
                row["sdpa_note"] = "repeat_interleave"
            row["sdpa_ms"] = time_ms(sdpa, warmup, repeats)
            del kc, vc
        except torch.OutOfMemoryError as e:
            row["sdpa_ms"] = None
            row["sdpa_note"] = f"OOM: {str(e).splitlines()[0]}"
        torch.cuda.empty_cache()

    # (b) flash attention, Hydragen-style: decode queries of one kv head stacked as the query
    # length (non-causal, so no repeat_kv), prefix once for the whole batch, then our merge.
    try:
        def flash_hyd():
            qs = q.view(B, hkv, G, D).transpose(0, 1).reshape(1, hkv, B * G, D)
            po, pl = flash_lse(qs, kp, vp)  # [1, Hkv, B*G, D], [1, Hkv, B*G]
            po = po.reshape(hkv, B, G, D).transpose(0, 1).reshape(B, HQ, 1, D)
            pl = pl.reshape(hkv, B, G).transpose(0, 1).reshape(B, HQ, 1)
            so, sl = flash_lse(q.view(B, hkv, G, D), ks, vs)  # [B, Hkv, G, D]
            return hydrogen_ops.merge_attention(
                [po, so.reshape(B, HQ, 1, D)], [pl, sl.reshape(B, HQ, 1)], out_dtype=q.dtype)

        ref = flash_hyd()[0].float()
        mine = ours().float()
        row["flash_hyd_max_abs_diff"] = (ref - mine).abs().max().item()
        row["flash_hyd_ms"] = time_ms(flash_hyd, warmup, repeats)
    except Exception as e:  # noqa: BLE001
        row["flash_hyd_ms"] = None
        row["flash_hyd_note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    ap.add_argument("--out", default=None, help="write the results as JSON to this path")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_cuda.py: no CUDA GPU, nothing to benchmark")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"skipped": "no CUDA GPU"}, f, indent=2)
        return 0
    warmup = 2 if args.quick else 5
    repeats = args.repeats or (5 if args.quick else 20)
    rows = ROWS[:2] if args.quick else ROWS
    torch.manual_seed(0)
    mm_n = 4096 if args.quick else 8192
    peak_tflops = mm_tflops(mm_n, warmup, repeats)
    peak_gbps = copy_gbps(1 << 30, warmup, repeats)
    dev = torch.cuda.get_device_name()
    results, suffix_results = [], []

    def save(complete):
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"device": dev, "torch": torch.__version__, "mm_tflops": peak_tflops, "mm_n": mm_n,
                           "copy_gbps": peak_gbps, "quick": args.quick, "complete": complete, "rows": results,
                           "suffix_rows": suffix_results}, f, indent=2)

    def measure(into, fn, *key):
        try:
            r = fn(*key, warmup, repeats)
        except Exception as e:  # noqa: BLE001  (one failing row must not lose the others)
            r = {"key": list(key), "error": f"{type(e).__name__}: {e}"[:300]}
        into.append(r)
        torch.cuda.empty_cache()
        print(json.dumps(r), file=sys.stderr)
        save(complete=False)

    for hkv in (8, 32):
        for B, prefix in rows:
            measure(results, bench_row, B, prefix, hkv)
    suffix_grid = SUFFIX_GRID_QUICK if args.quick else SUFFIX_GRID
    for hkv, B, suffix in suffix_grid:
        measure(suffix_results, bench_suffix, B, suffix, hkv)

    print(f"\n## Hydragen decode attention, {dev}, torch {torch.__version__}, bf16, Hq={HQ}, D={D}, suffix={SUFFIX}\n")
    print(f"bf16 torch.mm {mm_n}^3: {peak_tflops:.1f} TFLOP/s; device copy: {peak_gbps:.0f} GB/s (read+write)\n")
    print("| Hkv | B | prefix | ours ms | prefix ms | prefix TFLOP/s (% mm) | suffix ms | suffix GB/s (% copy) "
          "| SDPA ms | flash-hyd ms | x SDPA | x flash-hyd |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {' | '.join(map(str, r['key']))} | error: {r['error'][:80]} |||||||||")
            continue
        sd, fh, o = r.get("sdpa_ms"), r.get("flash_hyd_ms"), r["ours_ms"]
        print(
            f"| {r['kv_heads']} | {r['batch']} | {r['prefix']} | {o:.3f} | {r['prefix_ms']:.3f} | "
            f"{r['prefix_tflops']:.1f} ({100 * r['prefix_tflops'] / peak_tflops:.0f}%) | {r['suffix_ms']:.3f} | "
            f"{r['suffix_gbps']:.0f} ({100 * r['suffix_gbps'] / peak_gbps:.0f}%) | "
            f"{fmt(sd) if sd is not None else r.get('sdpa_note', 'n/a')} | {fmt(fh) if fh is not None else r.get('flash_hyd_note', 'n/a')} | "
            f"{fmt(sd / o if sd else None, '.1f')} | {fmt(fh / o if fh else None, '.1f')} |")
    print("\n| Hkv | B | suffix | suffix ms | suffix GB/s (% copy) |\n|---|---|---|---|---|")
    for r in suffix_results:
        if "error" in r:
            print(f"| {' | '.join(map(str, r['key']))} | error: {r['error'][:80]} | |")
            continue
        print(f"| {r['kv_heads']} | {r['batch']} | {r['suffix']} | {r['suffix_ms']:.3f} | "
              f"{r['suffix_gbps']:.0f} ({100 * r['suffix_gbps'] / peak_gbps:.0f}%) |")
    save(complete=True)
    if args.out:
        print(f"\nwrote {args.out}")
    return 1 if any("error" in r for r in results + suffix_results) else 0


if __name__ == "__main__":
    sys.exit(main())

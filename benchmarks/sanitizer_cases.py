"""Small calls of every hydrogen op, for compute-sanitizer (memcheck, racecheck) on a GPU.

Shapes are small and uneven (padded prefixes with kv_lens, seq_to_prefix, suffix lengths
that are not tile multiples, an empty suffix row, Lq > 1) so that every kernel's edge
handling runs, at D = 64, 128 and 256 in bf16 and fp32. Inputs are made on the CPU and
copied, so that the device work is the ops' own. Prints "sanitizer cases: N calls ok".

  compute-sanitizer --tool memcheck python benchmarks/sanitizer_cases.py
  python benchmarks/sanitizer_cases.py --device cpu     # the same calls on the CPU
"""

from __future__ import annotations

import argparse
import sys

import torch

import hydrogen_ops

HEAD_DIMS = (64, 128, 256)
DTYPES = (torch.bfloat16, torch.float32)


def calls(device: str, dtype: torch.dtype, d: int):
    """(name, thunk) pairs covering prefix, suffix, merge and hydragen_attention."""
    g = torch.Generator().manual_seed(d)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def idx(values):
        return torch.tensor(values, dtype=torch.int32).to(device)

    B, hq, hkv = 3, 4, 2
    q1, q3 = rnd(B, hq, 1, d), rnd(B, hq, 3, d)
    kp, vp = rnd(2, hkv, 70, d), rnd(2, hkv, 70, d)
    prefix_lens, s2p = idx([37, 70]), idx([1, 0, 1])
    ks, vs = rnd(B, hkv, 45, d), rnd(B, hkv, 45, d)
    suffix_lens = idx([5, 45, 0])
    k1, v1 = rnd(1, hkv, 33, d), rnd(1, hkv, 33, d)
    parts = [(rnd(B, hq, 1, d), torch.randn(B, hq, 1, generator=g).to(device)) for _ in range(3)]
    return [
        ("prefix Lq=1", lambda: hydrogen_ops.prefix_attention(q1, kp, vp, prefix_lens, s2p)),
        ("prefix Lq=3", lambda: hydrogen_ops.prefix_attention(q3, kp, vp, prefix_lens, s2p, out_dtype=torch.float32)),
        ("suffix Lq=1", lambda: hydrogen_ops.suffix_attention(q1, ks, vs, suffix_lens)),
        ("suffix Lq=3 causal", lambda: hydrogen_ops.suffix_attention(q3, ks, vs, suffix_lens, out_dtype=torch.float32)),
        ("merge 3", lambda: hydrogen_ops.merge_attention([o for o, _ in parts], [s for _, s in parts])),
        ("hydragen 2 levels", lambda: hydrogen_ops.hydragen_attention(
            q1, [(k1, v1, None, None), (kp, vp, prefix_lens, s2p)], (ks, vs, suffix_lens))),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitizer_cases.py: no CUDA GPU")
        return 1
    n = 0
    with torch.inference_mode():
        for dtype in DTYPES:
            for d in HEAD_DIMS:
                for name, fn in calls(args.device, dtype, d):
                    result = fn()
                    out = result[0] if isinstance(result, tuple) else result
                    if args.device == "cuda":
                        torch.cuda.synchronize()  # a fault is reported at the call that made it
                    if out.shape[-1] != d:
                        raise RuntimeError(f"{name} {dtype} D={d}: output head dim {out.shape[-1]}")
                    n += 1
    print(f"sanitizer cases: {n} calls ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

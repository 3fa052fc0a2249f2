"""Runs the differential fuzz: N seeded cases per group, split over every CPU ISA variant
(each in its own process, since HYDROGEN_CPU_ISA is read once per process), or on CUDA.

    python tests/fuzz/run_fuzz.py --cases 10000                  # core group, every ISA
    python tests/fuzz/run_fuzz.py --cases 2000 --group nan_contract
    python tests/fuzz/run_fuzz.py --device cuda --cases 5000     # on a GPU machine
    python tests/fuzz/run_fuzz.py --group core --case 123 --isa avx2   # one case, verbose

Prints one line per ISA and group, every failure with the command that reproduces it, and
exits non-zero when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def available_isas():
    """The CPU ISA variants this machine can run."""
    isas = ["generic"]
    if platform.machine() in ("x86_64", "AMD64") and os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
        if " avx2" in flags and " fma" in flags and " f16c" in flags:
            isas.append("avx2")
        if " avx512f" in flags:
            isas.append("avx512")
    return isas


def run_worker(group, indices, seed, device):
    """Runs the cases in this process; returns the summary dict."""
    from fuzz_cases import run_case

    start = time.perf_counter()
    failures, worst_ratio, n = [], 0.0, 0
    for index in indices:
        result = run_case(seed, group, index, device)
        n += 1
        if not result.ok:
            failures.append({"index": index, "error": result.error, "what": result.what})
        elif result.out_bound > 0:
            worst_ratio = max(worst_ratio, result.out_err / result.out_bound)
    return {
        "group": group,
        "cases": n,
        "failures": failures,
        "worst_error_to_bound": worst_ratio,
        "seconds": round(time.perf_counter() - start, 1),
    }


def spawn_worker(isa, group, cases, seed, stride, offset, timeout=None):
    """Runs cases offset, offset + stride, ... below `cases` in a fresh process with
    HYDROGEN_CPU_ISA=isa, using the hydrogen_ops that this process imports."""
    import hydrogen_ops

    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(hydrogen_ops.__file__)))
    env = dict(os.environ, HYDROGEN_CPU_ISA=isa)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [pkg_root, env.get("PYTHONPATH", "")] if p)
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", "--group", group, "--cases", str(cases),
        "--seed", str(seed), "--stride", str(stride), "--offset", str(offset),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"fuzz worker ({isa}, {group}) exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    summary = json.loads(lines[-1])
    summary["isa"] = isa
    return summary


def repro_command(summary, seed, failure):
    isa = f"--isa {summary['isa']} " if summary.get("isa") else ""
    return f"python tests/fuzz/run_fuzz.py --group {summary['group']} --seed {seed} {isa}--case {failure['index']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000, help="cases per group, split over the ISA variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group", choices=["core", "nan_contract", "all"], default="core")
    ap.add_argument("--isa", default="all", help="all, or one of generic, avx2, avx512 (CPU only)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--case", type=int, help="run this one case and print it")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    groups = ["core", "nan_contract"] if args.group == "all" else [args.group]

    if args.worker:
        print(json.dumps(run_worker(groups[0], range(args.offset, args.cases, args.stride), args.seed, args.device)))
        return 0

    if args.case is not None:
        if args.device == "cpu" and args.isa != "all" and os.environ.get("HYDROGEN_CPU_ISA") != args.isa:
            os.environ["HYDROGEN_CPU_ISA"] = args.isa  # read when the extension loads, below
        from fuzz_cases import run_case

        result = run_case(args.seed, groups[0], args.case, args.device)
        print(f"case {args.case} ({groups[0]}, seed {args.seed}): {'ok' if result.ok else 'FAILED'}\n  {result.what}")
        if not result.ok:
            print(f"  {result.error}")
        return 0 if result.ok else 1

    start = time.perf_counter()
    summaries = []
    for group in groups:
        if args.device == "cuda":
            summary = run_worker(group, range(args.cases), args.seed, "cuda")
            summary["isa"] = None
            summaries.append(summary)
            continue
        isas = available_isas() if args.isa == "all" else [args.isa]
        for k, isa in enumerate(isas):
            summaries.append(spawn_worker(isa, group, args.cases, args.seed, len(isas), k))
    failed = 0
    for s in summaries:
        failed += len(s["failures"])
        where = s["isa"] or args.device
        print(
            f"{s['group']:>12} {where:>8}: {s['cases']} cases, {len(s['failures'])} failed, "
            f"worst error/bound {s['worst_error_to_bound']:.2f}, {s['seconds']} s"
        )
        for f in s["failures"][:20]:
            print(f"    case {f['index']}: {f['error']}\n      {f['what']}\n      repro: {repro_command(s, args.seed, f)}")
        if len(s["failures"]) > 20:
            print(f"    ... and {len(s['failures']) - 20} more")
    total = sum(s["cases"] for s in summaries)
    print(f"total: {total} cases, {failed} failed, {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

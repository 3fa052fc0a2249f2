"""The GPU record: gpu_check.json, assembled from what benchmarks/gpu_check.sh left behind.

  python benchmarks/gpu_record.py hash                        # csrc_sha256 of this checkout
  python benchmarks/gpu_record.py launches --out launches.json     # on a GPU: launches per call
  python benchmarks/gpu_record.py assemble --results DIR --out gpu_check.json
  python benchmarks/gpu_record.py tests-ran JUNIT_OR_LOG...    # exit 0 if any test was executed
  python benchmarks/gpu_record.py verify benchmarks/results/gpu_check.json  # the record ran these sources?

`assemble` reads, from DIR: status.txt (key=value lines written by gpu_check.sh), the pytest
JUnit XML files junit_<step>.xml (or, for a step cut off before pytest wrote its XML, the
verbose log test_<step>_log.txt), attention_sweep_cuda.json, attention_sweep_flex_cuda.json,
attention_cuda.json, launches.json and the compute-sanitizer logs. Every field of the record
that the run did not measure is null, and "missing" says why; nothing is filled in by hand.

Definitions:
  * csrc_sha256: sha256 over the contents of every file under csrc/ except csrc/cpu/,
    concatenated in sorted order of their paths relative to the repository root.
  * tests: counts over the test cases of all steps; failed includes errors. A passed case
    counts in cuda_passed when it lives in test_cuda.py, or when "cuda" is a word of its
    function name or of its parameter id (e.g. test_x[cuda-bfloat16], test_cuda_graph).
  * ratios are baseline time / Hydrogen time, measured in the same process.
  * never_slower: per row of the CUDA attention sweep, SDPA time / Hydrogen time; the
    minimum over the rows where SDPA ran (rows it could not run are listed with the reason).
  * suffix_copy_fraction: the suffix op's GB/s over the device-to-device copy's GB/s of the
    same run, smallest over the measurements at batch >= 256 and suffix 128..1024.
  * prefix_mm_fraction: the prefix op's TFLOP/s over bf16 torch.mm on 8192^2 of the same
    run, smallest over the rows at prefix 16384, D = 128 and batch * group >= 512.
  * launches_per_call: device operations (kernels, memsets, memcpys) recorded by
    torch.profiler during one hydragen_attention decode call, averaged over several calls
    after warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pytest steps of gpu_check.sh, in the order they run
TEST_STEPS = ("strict", "rest")
SWEEP_SHAPE = {"q_heads": 16, "kv_heads": 16, "head_dim": 128, "dtype": "bfloat16", "suffix": 128}
MM_N = 8192


# ----------------------------------------------------------------------------- source hash
def csrc_files(root: str = ROOT) -> List[str]:
    """Paths (relative to root, '/'-separated, sorted) of the files the CUDA record covers."""
    found = []
    for dirpath, _, filenames in os.walk(os.path.join(root, "csrc")):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if not rel.startswith("csrc/cpu/"):
                found.append(rel)
    return sorted(found)


def csrc_sha256(root: str = ROOT) -> str:
    h = hashlib.sha256()
    for rel in csrc_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


# ----------------------------------------------------------------------------- tests
def _words(text: str) -> List[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def is_cuda_test(test_id: str) -> bool:
    """test_id: 'where::name[params]' (where: a JUnit classname or a file path)."""
    where, _, name = test_id.rpartition("::")
    if "test_cuda" in re.split(r"[./:]+", where):
        return True
    return "cuda" in _words(name)


def junit_cases(path: str) -> List[Tuple[str, str, str]]:
    """(test id, 'passed'|'failed'|'skipped', message) of every test case in a JUnit XML file."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        tags = {child.tag: child for child in case}
        bad = tags.get("failure", tags.get("error"))
        if bad is not None:
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            cases.append((test_id, "failed", message[0][:200] if message else ""))
        elif "skipped" in tags:
            cases.append((test_id, "skipped", (tags["skipped"].get("message") or "")[:200]))
        else:
            cases.append((test_id, "passed", ""))
    return cases


_LOG_LINE = re.compile(r"^(\S+\.py::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_LOG_OUTCOME = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "failed",
                "SKIPPED": "skipped", "XFAIL": "skipped"}


def log_cases(text: str) -> List[Tuple[str, str, str]]:
    """Test cases from `pytest -v` output (a case reported twice, e.g. passed then an error
    at teardown, counts once, failed if either report failed)."""
    outcome: Dict[str, str] = {}
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            test_id, result = m.group(1), _LOG_OUTCOME[m.group(2)]
            if outcome.get(test_id) != "failed":
                outcome[test_id] = result
    return [(t, o, "") for t, o in outcome.items()]


def step_cases(results: str, step: str) -> Tuple[Optional[List[Tuple[str, str, str]]], str]:
    """The cases of one pytest step, from its JUnit XML, else its verbose log; (None, why) if neither."""
    xml = os.path.join(results, f"junit_{step}.xml")
    log = os.path.join(results, f"test_{step}_log.txt")
    why = "no JUnit XML"
    if os.path.exists(xml):
        try:
            return junit_cases(xml), "junit"
        except ET.ParseError as e:
            why = f"unreadable JUnit XML ({e})"
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            cases = log_cases(f.read())
        if cases:
            return cases, f"log ({why})"
    return None, why


def summarize_tests(results: str, status: Dict[str, str]):
    """(tests field, {step: details}) from every step's cases; the field is None if none ran."""
    merged: Dict[str, Tuple[str, str]] = {}
    steps = {}
    for step in TEST_STEPS:
        cases, source = step_cases(results, step)
        info = {"files": status.get(f"{step}_files"), "rc": _int(status.get(f"{step}_rc")), "source": source}
        info["cut_off"] = info["rc"] in (124, 137)
        if status.get(f"{step}_note"):
            info["note"] = status[f"{step}_note"]
        if cases is not None:
            for outcome in ("passed", "failed", "skipped"):
                info[outcome] = sum(1 for _, o, _ in cases if o == outcome)
            for test_id, outcome, message in cases:
                merged[test_id] = (outcome, message)
        steps[step] = info
    if not merged:
        return None, steps
    counts = {o: sum(1 for v, _ in merged.values() if v == o) for o in ("passed", "failed", "skipped")}
    counts["cuda_passed"] = sum(1 for t, (o, _) in merged.items() if o == "passed" and is_cuda_test(t))
    counts["failed_ids"] = [f"{t}: {m}" if m else t for t, (o, m) in merged.items() if o == "failed"][:50]
    return counts, steps


def executed_tests(paths: Iterable[str]) -> int:
    """Test cases that ran (passed or failed) in these JUnit XML files or pytest -v logs."""
    total = 0
    for path in paths:
        if not os.path.exists(path):
            continue
        if path.endswith(".xml"):
            try:
                cases = junit_cases(path)
            except ET.ParseError:
                continue
        else:
            with open(path, errors="replace") as f:
                cases = log_cases(f.read())
        total += sum(1 for _, o, _ in cases if o != "skipped")
    return total


# ----------------------------------------------------------------------------- benchmarks
def _int(x):
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _ratio(baseline_ms, ours_ms):
    if baseline_ms is None or ours_ms is None or not ours_ms > 0:
        return None
    return baseline_ms / ours_ms


def load_json(path: str):
    """(data, None) or (None, why)."""
    if not os.path.exists(path):
        return None, f"{os.path.basename(path)} was not written (step not run or cut off before its first row)"
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{os.path.basename(path)} is unreadable: {e}"
    if "skipped" in data:
        return None, f"{os.path.basename(path)}: {data['skipped']}"
    return data, None


def _sweep_problem(sweep) -> Optional[str]:
    if sweep.get("device") != "cuda":
        return f"sweep ran on {sweep.get('device')!r}, not cuda"
    if sweep.get("quick"):
        return "sweep ran with --quick (not the full grid)"
    return None


def _shape_mismatch(row) -> Optional[str]:
    bad = {k: row.get(k) for k, v in SWEEP_SHAPE.items() if row.get(k) != v}
    return f"row shape {bad} differs from the sweep shape {SWEEP_SHAPE}" if bad else None


def never_slower(sweep) -> Tuple[Optional[dict], Optional[str]]:
    problem = _sweep_problem(sweep)
    if problem:
        return None, problem
    rows = []
    for r in sweep.get("results", []):
        entry = {"batch": r.get("batch"), "prefix": r.get("prefix"), "sdpa_ms": r.get("sdpa_ms"),
                 "hydrogen_ms": r.get("hydrogen_ms"), "ratio": _ratio(r.get("sdpa_ms"), r.get("hydrogen_ms"))}
        if "error" in r:
            entry["error"] = r["error"]
        elif entry["ratio"] is None:
            entry["note"] = r.get("sdpa_note", "SDPA not timed")
        rows.append(entry)
    measured = [e["ratio"] for e in rows if e["ratio"] is not None]
    if not measured:
        return None, "no sweep row has both an SDPA and a Hydrogen time"
    planned = sweep.get("rows_planned", len(rows))
    complete = bool(sweep.get("complete", True)) and len(rows) == planned and not any("error" in e for e in rows)
    return {"min_ratio_vs_sdpa": min(measured), "rows": rows, "complete": complete, "rows_planned": planned,
            "config": sweep.get("config")}, None


def sweep_ratio(sweeps, batch: int, prefix: int, baseline: str) -> Tuple[Optional[float], Optional[str]]:
    """baseline_ms / hydrogen_ms at (batch, prefix) from the first sweep (sweep shape) that timed both."""
    why = f"no sweep row at batch {batch}, prefix {prefix}"
    for sweep in sweeps:
        if sweep is None or _sweep_problem(sweep):
            why = _sweep_problem(sweep) if sweep is not None else why
            continue
        for r in sweep.get("results", []):
            if r.get("batch") != batch or r.get("prefix") != prefix:
                continue
            if "error" in r:
                why = f"row failed: {r['error']}"
                continue
            mismatch = _shape_mismatch(r)
            if mismatch:
                why = mismatch
                continue
            value = _ratio(r.get(f"{baseline}_ms"), r.get("hydrogen_ms"))
            if value is not None:
                return value, None
            why = f"{baseline} not timed: {r.get(f'{baseline}_note', 'no time recorded')}"
    return None, why


def suffix_copy_fraction(attn) -> Tuple[Optional[float], List[dict], Optional[str]]:
    copy = attn.get("copy_gbps")
    if not copy:
        return None, [], "attention_cuda.json has no device-to-device copy rate"
    rows = []
    for r in attn.get("rows", []) + attn.get("suffix_rows", []):
        if r.get("suffix_gbps") and r.get("batch", 0) >= 256 and 128 <= r.get("suffix", 0) <= 1024:
            rows.append({"batch": r["batch"], "suffix": r["suffix"], "kv_heads": r.get("kv_heads"),
                         "prefix": r.get("prefix"), "suffix_gbps": r["suffix_gbps"],
                         "fraction": r["suffix_gbps"] / copy})
    if not rows:
        return None, [], "no suffix measurement at batch >= 256, suffix 128..1024"
    return min(r["fraction"] for r in rows), rows, None


def prefix_mm_fraction(attn) -> Tuple[Optional[float], List[dict], Optional[str]]:
    if attn.get("mm_n") != MM_N or not attn.get("mm_tflops"):
        return None, [], f"torch.mm rate measured at n = {attn.get('mm_n')}, not {MM_N}"
    rows = []
    for r in attn.get("rows", []):
        if not r.get("prefix_tflops") or r.get("prefix") != 16384 or r.get("head_dim") != 128:
            continue
        group = r["q_heads"] // r["kv_heads"]
        if r["batch"] * group >= 512:
            rows.append({"batch": r["batch"], "kv_heads": r["kv_heads"], "prefix": r["prefix"],
                         "prefix_tflops": r["prefix_tflops"], "fraction": r["prefix_tflops"] / attn["mm_tflops"]})
    if not rows:
        return None, [], "no prefix measurement at prefix 16384, D 128, batch * group >= 512"
    return min(r["fraction"] for r in rows), rows, None


# ----------------------------------------------------------------------------- sanitizer
_MEMCHECK = re.compile(r"ERROR SUMMARY: (\d+) error")
_RACECHECK = re.compile(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
_CASES_OK = re.compile(r"sanitizer cases: (\d+) calls ok")


def parse_sanitizer_log(text: str) -> dict:
    """errors (None when the tool printed no summary), warnings (racecheck), cases run ok."""
    out = {"errors": None}
    m = _RACECHECK.search(text)
    if m:
        out.update(errors=int(m.group(2)), warnings=int(m.group(3)), summary=m.group(0))
    else:
        m = _MEMCHECK.search(text)
        if m:
            out.update(errors=int(m.group(1)), summary=m.group(0))
    m = _CASES_OK.search(text)
    out["calls_ok"] = int(m.group(1)) if m else None
    return out


def sanitizer_record(results: str, status: Dict[str, str]) -> dict:
    state = status.get("sanitizer")
    if state != "ran":
        return {"skipped": status.get("sanitizer_note", state or "not run")}
    rec = {"tool": status.get("sanitizer_tool")}
    for tool in ("memcheck", "racecheck"):
        path = os.path.join(results, f"sanitizer_{tool}_log.txt")
        if not os.path.exists(path):
            rec[tool] = {"skipped": "no log"}
            continue
        with open(path, errors="replace") as f:
            rec[tool] = parse_sanitizer_log(f.read())
        rec[tool]["rc"] = _int(status.get(f"sanitizer_{tool}_rc"))
    return rec


# ----------------------------------------------------------------------------- launches (GPU)
_DEVICE_ACTIVITIES = {"kernel": "kernels", "gpu_memset": "memsets", "gpu_memcpy": "memcpys"}
_NOT_LAUNCHES = {"gpu_user_annotation", "cuda_sync", "cuda_profiler_range", "overhead"}


def count_device_ops(events) -> dict:
    """Kernels, memsets and memcpys among torch.profiler FunctionEvents (kernel names listed)."""
    from torch.autograd import DeviceType

    counts = {"kernels": 0, "memsets": 0, "memcpys": 0, "kernel_names": []}
    for e in events:
        if e.device_type != DeviceType.CUDA:
            continue
        activity = getattr(e, "activity_type", None)
        if activity in _NOT_LAUNCHES:
            continue
        kind = _DEVICE_ACTIVITIES.get(activity)
        if kind is None:  # torch without activity types: device events are kernels, memsets or memcpys
            kind = "memsets" if e.name.startswith("Memset") else "memcpys" if e.name.startswith("Memcpy") else "kernels"
        counts[kind] += 1
        if kind == "kernels":
            counts["kernel_names"].append(e.name)
    counts["total"] = counts["kernels"] + counts["memsets"] + counts["memcpys"]
    return counts


def launch_cases(device: str = "cuda"):
    """name -> (q, prefixes, suffix): decode calls with one and two prefix levels (bf16)."""
    import torch

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=torch.bfloat16)

    def case(batch, levels, hq=32, hkv=8, d=128, suffix=128):
        q = rnd(batch, hq, 1, d)
        prefixes = []
        for n_prefix, length in levels:
            s2p = None if n_prefix == 1 else (torch.arange(batch, device=device) * n_prefix // batch)
            prefixes.append((rnd(n_prefix, hkv, length, d), rnd(n_prefix, hkv, length, d), None, s2p))
        return q, prefixes, (rnd(batch, hkv, suffix, d), rnd(batch, hkv, suffix, d), None)

    return {"one_level": case(64, [(1, 2048)]), "two_level": case(64, [(1, 2048), (4, 512)]),
            "one_level_batch1": case(1, [(1, 2048)])}


def measure_launches(calls: int = 4) -> dict:
    """Device operations per hydragen_attention call, from torch.profiler (needs a CUDA GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import hydrogen_ops

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU")
    out = {}
    for name, (q, prefixes, suffix) in launch_cases("cuda").items():
        def call():
            return hydrogen_ops.hydragen_attention(q, prefixes, suffix)

        for _ in range(3):
            call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                call()
            torch.cuda.synchronize()
        counts = count_device_ops(prof.events())
        if counts["total"] == 0:  # a call always does device work: the profiler saw none
            raise RuntimeError("torch.profiler recorded no device activity (is CUPTI available?)")
        per_call = counts["total"] / calls
        out[name] = {"per_call": int(per_call) if per_call == int(per_call) else per_call, "calls": calls,
                     "kernels": counts["kernels"] / calls, "memsets": counts["memsets"] / calls,
                     "memcpys": counts["memcpys"] / calls,
                     "kernel_names": sorted(set(counts["kernel_names"])),
                     "shape": {"batch": q.shape[0], "q_heads": q.shape[1], "kv_heads": prefixes[0][0].shape[1],
                               "head_dim": q.shape[3], "levels": [list(k.shape[::2]) for k, _, _, _ in prefixes],
                               "suffix": suffix[0].shape[2]}}
    return out


def device_info() -> dict:
    import platform

    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------- assembly
def read_status(path: str) -> Dict[str, str]:
    """key=value lines (later lines win); other lines are ignored."""
    status = {}
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key.strip():
                    status[key.strip()] = value.strip()
    return status


def assemble(results: str, root: str = ROOT, info: Optional[dict] = None) -> dict:
    status = read_status(os.path.join(results, "status.txt"))
    missing: Dict[str, str] = {}
    launches, why_launches = load_json(os.path.join(results, "launches.json"))
    if info is None:
        info = (launches or {}).get("device") or _device_info_or_none()
    record = {"csrc_sha256": csrc_sha256(root), "csrc_files": csrc_files(root),
              "gpu": info.get("gpu"), "torch": info.get("torch"), "cuda": info.get("cuda"),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if not record["gpu"]:
        missing["gpu"] = "torch saw no CUDA GPU"

    tests, steps = summarize_tests(results, status)
    record["tests"] = tests
    record["test_steps"] = steps
    if tests is None:
        missing["tests"] = "; ".join(f"{s}: {d['source']}" for s, d in steps.items())

    sweep, why_sweep = load_json(os.path.join(results, "attention_sweep_cuda.json"))
    flex_sweep, why_flex = load_json(os.path.join(results, "attention_sweep_flex_cuda.json"))
    if sweep is None:
        record["never_slower"] = None
        missing["never_slower"] = why_sweep
    else:
        record["never_slower"], why = never_slower(sweep)
        if why:
            missing["never_slower"] = why
        elif not record["never_slower"]["complete"]:
            missing["never_slower.complete"] = "the sweep was cut off or a row failed: the minimum covers fewer rows"

    attn, why_attn = load_json(os.path.join(results, "attention_cuda.json"))
    for field, fn in (("suffix_copy_fraction", suffix_copy_fraction), ("prefix_mm_fraction", prefix_mm_fraction)):
        if attn is None:
            record[field] = None
            missing[field] = why_attn
        else:
            record[field], record[f"{field}_rows"], why = fn(attn)
            if why:
                missing[field] = why

    if launches is None or "error" in (launches or {}):
        record["launches_per_call"] = None
        missing["launches_per_call"] = why_launches or launches["error"]
    else:
        per_call = {k: launches.get("counts", {}).get(k, {}).get("per_call") for k in ("one_level", "two_level")}
        record["launches_per_call"] = per_call
        record["launches_detail"] = launches.get("counts")
        for k, v in per_call.items():
            if v is None:
                missing[f"launches_per_call.{k}"] = "not measured"

    for field, batch, prefix, baseline, sweeps, why_none in (
            ("flex_ratio_1024_16384", 1024, 16384, "flex", [flex_sweep, sweep], why_flex),
            ("sdpa_ratio_256_16384", 256, 16384, "sdpa", [sweep], why_sweep)):
        if all(s is None for s in sweeps):
            record[field] = None
            missing[field] = why_none
            continue
        record[field], why = sweep_ratio(sweeps, batch, prefix, baseline)
        if why:
            missing[field] = why

    record["sanitizer"] = sanitizer_record(results, status)
    record["check"] = status
    record["missing"] = missing
    return record


def _device_info_or_none() -> dict:
    try:
        return device_info()
    except Exception as e:  # noqa: BLE001  (the record is still written without torch)
        return {"gpu": None, "torch": None, "cuda": None, "error": f"{type(e).__name__}: {e}"}


def _finite(obj):
    """JSON cannot hold NaN or inf: they become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(_finite(payload), f, indent=2)
        f.write("\n")


def summary_lines(record: dict) -> List[str]:
    """The record's headline fields, one per line, for a terminal."""
    lines = [f"{k}: {record.get(k)}" for k in ("gpu", "torch", "csrc_sha256")]
    tests = record.get("tests")
    if tests:
        lines.append("tests: " + ", ".join(f"{k} {tests[k]}" for k in ("passed", "failed", "skipped", "cuda_passed")))
        lines += [f"  failed: {t}" for t in tests["failed_ids"][:15]]
    else:
        lines.append("tests: none ran")
    ns = record.get("never_slower")
    lines.append(f"never_slower.min_ratio_vs_sdpa: {ns['min_ratio_vs_sdpa'] if ns else None}")
    for k in ("suffix_copy_fraction", "prefix_mm_fraction", "launches_per_call", "flex_ratio_1024_16384",
              "sdpa_ratio_256_16384", "sanitizer"):
        lines.append(f"{k}: {record.get(k)}")
    lines += [f"missing {k}: {v}" for k, v in record.get("missing", {}).items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hash", help="print csrc_sha256 of a checkout")
    p.add_argument("--root", default=ROOT)
    p = sub.add_parser("launches", help="count device operations per call (CUDA GPU)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("assemble", help="write gpu_check.json from a results folder")
    p.add_argument("--results", required=True)
    p.add_argument("--root", default=ROOT)
    p.add_argument("--out", required=True)
    p = sub.add_parser("verify", help="exit 0 if a record's csrc_sha256 is this checkout's")
    p.add_argument("record")
    p.add_argument("--root", default=ROOT)
    p = sub.add_parser("tests-ran", help="exit 0 if these JUnit XML files / pytest -v logs executed a test")
    p.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)

    if args.command == "hash":
        print(csrc_sha256(args.root))
    elif args.command == "launches":
        try:
            payload = {"device": device_info(), "counts": measure_launches()}
        except Exception as e:  # noqa: BLE001  (the reason goes into the record)
            payload = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        write(args.out, payload)
        print(json.dumps(payload, indent=2))
        return 1 if "error" in payload else 0
    elif args.command == "assemble":
        record = assemble(args.results, args.root)
        write(args.out, record)
        print("\n".join(summary_lines(record)))
    elif args.command == "verify":
        with open(args.record) as f:
            recorded = json.load(f).get("csrc_sha256")
        here = csrc_sha256(args.root)
        if recorded != here:
            print(f"{args.record}: csrc_sha256 {recorded} is not this checkout's {here}: the CUDA sources "
                  "changed since the GPU run")
            return 1
        print(f"{args.record}: csrc_sha256 matches this checkout")
    elif args.command == "tests-ran":
        n = executed_tests(args.paths)
        print(f"{n} tests executed")
        return 0 if n > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

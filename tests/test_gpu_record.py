"""The GPU record (benchmarks/gpu_record.py) from small fixture inputs, on the CPU: the source
hash, test counts from JUnit XML and pytest logs, ratios from benchmark JSON in the format
the benchmark scripts write, sanitizer summaries, launch counting, and the assembled record."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_record  # noqa: E402

RECORD_FIELDS = {"csrc_sha256", "gpu", "torch", "date", "tests", "never_slower", "suffix_copy_fraction",
                 "prefix_mm_fraction", "launches_per_call", "flex_ratio_1024_16384", "sdpa_ratio_256_16384"}


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- source hash
def test_csrc_hash_covers_everything_but_cpu_in_sorted_order(tmp_path):
    files = {"csrc/ops.cpp": "ops", "csrc/cuda/merge.cu": "merge", "csrc/attention_args.h": "args",
             "csrc/cpu/tile_kernels.cpp": "cpu", "csrc/cpu_like.h": "not the cpu folder"}
    for rel, text in files.items():
        _write(tmp_path / rel, text)
    assert gpu_record.csrc_files(str(tmp_path)) == [
        "csrc/attention_args.h", "csrc/cpu_like.h", "csrc/cuda/merge.cu", "csrc/ops.cpp"]
    expected = hashlib.sha256(b"args" + b"not the cpu folder" + b"merge" + b"ops").hexdigest()
    first = gpu_record.csrc_sha256(str(tmp_path))
    assert first == expected

    _write(tmp_path / "csrc/cpu/tile_kernels.cpp", "changed")  # csrc/cpu is not covered
    assert gpu_record.csrc_sha256(str(tmp_path)) == first
    _write(tmp_path / "csrc/cuda/merge.cu", "merge2")  # contents are
    assert gpu_record.csrc_sha256(str(tmp_path)) != first
    _write(tmp_path / "csrc/cuda/merge.cu", "ops")  # and so is the order: swap two files' contents
    _write(tmp_path / "csrc/ops.cpp", "merge")
    assert gpu_record.csrc_sha256(str(tmp_path)) != first
    _write(tmp_path / "csrc/cuda/merge.cu", "merge")
    _write(tmp_path / "csrc/ops.cpp", "ops")
    assert gpu_record.csrc_sha256(str(tmp_path)) == first


def test_csrc_hash_of_this_checkout_and_cli(capsys):
    files = gpu_record.csrc_files(ROOT)
    assert "csrc/ops.cpp" in files and any(f.startswith("csrc/cuda/") for f in files)
    assert not any(f.startswith("csrc/cpu/") for f in files)
    assert gpu_record.main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == gpu_record.csrc_sha256(ROOT)


# ----------------------------------------------------------------------------- tests
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="8">
<testcase classname="tests.test_cuda" name="test_merge[dtype0-1]" time="0.1"/>
<testcase classname="tests.test_cuda" name="test_prefix_long_split" time="0.1"><failure message="AssertionError: out differs&#10;more">trace</failure></testcase>
<testcase classname="tests.test_ops" name="test_prefix[cuda-B1-dtype0]" time="0.1"/>
<testcase classname="tests.test_ops" name="test_prefix[cpu-B1-dtype0]" time="0.1"/>
<testcase classname="tests.test_ops" name="test_cudagraphs_note" time="0.1"/>
<testcase classname="tests.test_api.TestContract" name="test_clamps[cuda]" time="0.1"><error message="fixture failed">x</error></testcase>
<testcase classname="tests.test_api" name="test_big[cuda]" time="0.0"><skipped type="pytest.skip" message="needs memory">s</skipped></testcase>
<testcase classname="tests.test_api" name="test_xfail[cpu]" time="0.0"><skipped type="pytest.xfail" message="known"/></testcase>
</testsuite></testsuites>
"""

VERBOSE_LOG = """============================= test session starts ==============================
tests/test_hf.py::test_generate[llama] PASSED                              [ 10%]
tests/test_hf.py::test_cuda_greedy_and_logits[dtype0] PASSED               [ 20%]
tests/test_hf.py::test_teardown_fails PASSED                               [ 30%]
tests/test_hf.py::test_teardown_fails ERROR                                [ 30%]
tests/test_readme.py::test_block[0] SKIPPED (needs a CUDA GPU)             [ 40%]
tests/test_readme.py::test_block[1] FAILED                                 [ 50%]
tests/test_props.py::TestX::test_y[cuda] XFAIL (flaky)                     [ 60%]
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!! KeyboardInterrupt !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def test_cuda_test_rule():
    assert gpu_record.is_cuda_test("tests.test_cuda::test_merge[dtype0-1]")  # the file
    assert gpu_record.is_cuda_test("tests/test_cuda.py::test_x")
    assert gpu_record.is_cuda_test("tests.test_ops::test_prefix[cuda-B1]")  # a parameter
    assert gpu_record.is_cuda_test("tests.test_hf::test_cuda_greedy[dtype0]")  # a word of the name
    assert not gpu_record.is_cuda_test("tests.test_ops::test_prefix[cpu-B1]")
    assert not gpu_record.is_cuda_test("tests.test_ops::test_cudagraphs_note")  # "cuda" must be a word
    assert not gpu_record.is_cuda_test("tests.test_cuda_like::test_x")


def test_junit_cases(tmp_path):
    path = tmp_path / "junit_strict.xml"
    path.write_text(JUNIT)
    cases = {t: (o, m) for t, o, m in gpu_record.junit_cases(str(path))}
    assert len(cases) == 8
    assert cases["tests.test_cuda::test_prefix_long_split"] == ("failed", "AssertionError: out differs")
    assert cases["tests.test_api.TestContract::test_clamps[cuda]"][0] == "failed"  # an error is a failure
    assert cases["tests.test_api::test_xfail[cpu]"][0] == "skipped"
    assert sum(o == "passed" for o, _ in cases.values()) == 4


def test_log_cases():
    cases = {t: o for t, o, _ in gpu_record.log_cases(VERBOSE_LOG)}
    assert cases == {"tests/test_hf.py::test_generate[llama]": "passed",
                     "tests/test_hf.py::test_cuda_greedy_and_logits[dtype0]": "passed",
                     "tests/test_hf.py::test_teardown_fails": "failed",
                     "tests/test_readme.py::test_block[0]": "skipped",
                     "tests/test_readme.py::test_block[1]": "failed",
                     "tests/test_props.py::TestX::test_y[cuda]": "skipped"}


def test_summarize_tests_junit_and_log_fallback(tmp_path):
    (tmp_path / "junit_strict.xml").write_text(JUNIT)
    (tmp_path / "test_rest_log.txt").write_text(VERBOSE_LOG)  # cut off: no JUnit XML
    status = {"strict_rc": "1", "strict_files": "tests/test_cuda.py", "rest_rc": "124"}
    tests, steps = gpu_record.summarize_tests(str(tmp_path), status)
    assert {k: tests[k] for k in ("passed", "failed", "skipped", "cuda_passed")} == {
        "passed": 4 + 2, "failed": 2 + 2, "skipped": 2 + 2, "cuda_passed": 2 + 1}
    assert "tests.test_cuda::test_prefix_long_split: AssertionError: out differs" in tests["failed_ids"]
    assert steps["strict"]["source"] == "junit" and steps["strict"]["rc"] == 1 and not steps["strict"]["cut_off"]
    assert steps["rest"]["source"].startswith("log") and steps["rest"]["cut_off"]
    assert steps["rest"]["passed"] == 2


def test_unreadable_junit_falls_back_to_log(tmp_path):
    (tmp_path / "junit_strict.xml").write_text(JUNIT[:300])  # killed while writing
    (tmp_path / "test_strict_log.txt").write_text(VERBOSE_LOG)
    cases, source = gpu_record.step_cases(str(tmp_path), "strict")
    assert source.startswith("log (unreadable JUnit XML") and len(cases) == 6
    assert gpu_record.step_cases(str(tmp_path), "rest") == (None, "no JUnit XML")


def test_tests_ran(tmp_path, capsys):
    xml = tmp_path / "j.xml"
    xml.write_text(JUNIT)
    skipped_only = tmp_path / "s.txt"
    skipped_only.write_text("tests/test_cuda.py::test_a SKIPPED (needs a CUDA GPU)\n")
    assert gpu_record.main(["tests-ran", str(xml), str(tmp_path / "absent.xml")]) == 0
    assert gpu_record.main(["tests-ran", str(skipped_only), str(tmp_path / "absent.xml")]) == 1
    assert gpu_record.executed_tests([str(xml)]) == 6


# ----------------------------------------------------------------------------- benchmarks
def _row(batch, prefix, hydrogen_ms, sdpa_ms=None, **extra):
    row = {"batch": batch, "prefix": prefix, "suffix": 128, "q_heads": 16, "kv_heads": 16, "head_dim": 128,
           "dtype": "bfloat16", "hydrogen_ms": hydrogen_ms}
    if sdpa_ms is None:
        row["sdpa_note"] = "skipped: expanded KV 138.5 GB > 60 GB guard"
    else:
        row["sdpa_ms"] = sdpa_ms
    row.update(extra)
    return row


def _sweep(rows, **extra):
    data = {"benchmark": "attention_sweep", "device": "cuda", "quick": False, "complete": True,
            "rows_planned": len(rows), "config": "decode, bfloat16", "results": rows}
    data.update(extra)
    return data


SWEEP = _sweep([_row(1, 256, 0.10, 0.05), _row(256, 16384, 0.5, 7.5), _row(1024, 16384, 1.6, flex_ms=1.3)])
FLEX_SWEEP = _sweep([_row(1024, 16384, 1.2, flex_ms=2.4)])


def test_never_slower():
    ns, why = gpu_record.never_slower(SWEEP)
    assert why is None and ns["complete"]
    assert ns["min_ratio_vs_sdpa"] == pytest.approx(0.5)
    assert [r["ratio"] for r in ns["rows"]] == [pytest.approx(0.5), pytest.approx(15.0), None]
    assert "guard" in ns["rows"][2]["note"]

    cut = _sweep(SWEEP["results"][:2] + [{"batch": 4, "prefix": 256, "error": "RuntimeError: boom"}],
                 rows_planned=24, complete=False)
    ns, _ = gpu_record.never_slower(cut)
    assert not ns["complete"] and ns["rows"][2]["error"] == "RuntimeError: boom"
    assert gpu_record.never_slower(_sweep([], device="cpu")) == (None, "sweep ran on 'cpu', not cuda")
    assert gpu_record.never_slower(_sweep([], quick=True))[0] is None
    assert gpu_record.never_slower(_sweep([_row(1, 256, 0.1)]))[1].startswith("no sweep row has both")


def test_sweep_ratio():
    assert gpu_record.sweep_ratio([SWEEP], 256, 16384, "sdpa") == (pytest.approx(15.0), None)
    # the FlexAttention run comes first when present, else the main sweep's flex column
    assert gpu_record.sweep_ratio([FLEX_SWEEP, SWEEP], 1024, 16384, "flex") == (pytest.approx(2.0), None)
    assert gpu_record.sweep_ratio([None, SWEEP], 1024, 16384, "flex") == (pytest.approx(1.3 / 1.6), None)
    value, why = gpu_record.sweep_ratio([SWEEP], 1024, 16384, "sdpa")
    assert value is None and "guard" in why
    value, why = gpu_record.sweep_ratio([_sweep([_row(256, 16384, 0.5, 7.5, kv_heads=8)])], 256, 16384, "sdpa")
    assert value is None and "differs from the sweep shape" in why
    assert gpu_record.sweep_ratio([SWEEP], 64, 16384, "sdpa") == (None, "no sweep row at batch 64, prefix 16384")


ATTN = {"device": "NVIDIA H200", "mm_tflops": 700.0, "mm_n": 8192, "copy_gbps": 4000.0, "quick": False,
        "complete": True,
        "rows": [{"batch": 64, "prefix": 2048, "suffix": 128, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                  "prefix_tflops": 100.0, "suffix_gbps": 1000.0},
                 {"batch": 1024, "prefix": 16384, "suffix": 128, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                  "prefix_tflops": 420.0, "suffix_gbps": 3600.0},
                 {"batch": 1024, "prefix": 16384, "suffix": 128, "q_heads": 32, "kv_heads": 32, "head_dim": 128,
                  "prefix_tflops": 350.0, "suffix_gbps": 3400.0},
                 {"key": [256, 4096, 8], "error": "OutOfMemoryError"}],
        "suffix_rows": [{"batch": 256, "suffix": 1024, "q_heads": 32, "kv_heads": 8, "head_dim": 128,
                         "suffix_ms": 1.0, "suffix_gbps": 3000.0},
                        {"batch": 1024, "suffix": 2048, "kv_heads": 8, "suffix_gbps": 100.0}]}


def test_suffix_copy_fraction():
    value, rows, why = gpu_record.suffix_copy_fraction(ATTN)
    assert why is None and value == pytest.approx(3000 / 4000)  # batch 64 and suffix 2048 do not count
    assert sorted(r["fraction"] for r in rows) == [pytest.approx(0.75), pytest.approx(0.85), pytest.approx(0.9)]
    assert gpu_record.suffix_copy_fraction({"rows": []})[2] == "attention_cuda.json has no device-to-device copy rate"


def test_prefix_mm_fraction():
    value, rows, why = gpu_record.prefix_mm_fraction(ATTN)
    assert why is None and value == pytest.approx(350 / 700) and len(rows) == 2
    value, _, why = gpu_record.prefix_mm_fraction(dict(ATTN, mm_n=4096))
    assert value is None and "n = 4096" in why
    only_small = dict(ATTN, rows=[dict(ATTN["rows"][2], batch=256)])  # 256 * 1 < 512
    assert gpu_record.prefix_mm_fraction(only_small)[0] is None


def test_record_reads_what_the_sweep_writes(tmp_path):
    """The real sweep's JSON (a tiny CPU run) has the fields the record reads."""
    import attention_sweep

    out = tmp_path / "sweep.json"
    assert attention_sweep.main(["--batches", "2", "--prefixes", "64", "--suffix", "8", "--heads", "4",
                                 "--kv-heads", "4", "--head-dim", "16", "--no-flex", "--no-composed",
                                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["complete"] and data["rows_planned"] == 1 and "torch_composed_ms" not in data["results"][0]
    assert gpu_record.never_slower(data) == (None, "sweep ran on 'cpu', not cuda")
    ns, why = gpu_record.never_slower(dict(data, device="cuda"))
    row = data["results"][0]
    assert why is None and ns["min_ratio_vs_sdpa"] == pytest.approx(row["sdpa_ms"] / row["hydrogen_ms"])


def test_sweep_keeps_rows_before_a_failure(tmp_path, monkeypatch):
    import attention_sweep

    real_run = attention_sweep.run

    def failing_second_row(batch, *args, **kwargs):
        if batch == 3:
            raise RuntimeError("boom")
        return real_run(batch, *args, **kwargs)

    monkeypatch.setattr(attention_sweep, "run", failing_second_row)
    out = tmp_path / "sweep.json"
    rc = attention_sweep.main(["--batches", "2", "3", "--prefixes", "32", "--suffix", "8", "--heads", "2",
                               "--kv-heads", "2", "--head-dim", "16", "--no-flex", "--out", str(out)])
    assert rc == 1
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["hydrogen_ms"] > 0 and rows[1] == {"batch": 3, "prefix": 32, "error": "RuntimeError: boom"}


def test_attention_cuda_json_as_the_record_reads_it(tmp_path, monkeypatch):
    """attention_cuda.main's JSON layout and tables, with the GPU measurements replaced by fakes."""
    import attention_cuda

    def fake_row(B, prefix, hkv, warmup, repeats):
        if hkv == 32 and B == 64:
            raise torch.OutOfMemoryError("fake")
        return {"batch": B, "prefix": prefix, "suffix": 128, "q_heads": 32, "kv_heads": hkv, "head_dim": 128,
                "ours_ms": 1.0, "prefix_ms": 0.5, "suffix_ms": 0.4, "prefix_tflops": 400.0, "suffix_gbps": 3000.0,
                "sdpa_ms": None, "sdpa_note": "not run", "flash_hyd_ms": 2.0}

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(attention_cuda, "mm_tflops", lambda n, w, r: 800.0)
    monkeypatch.setattr(attention_cuda, "copy_gbps", lambda n, w, r: 4000.0)
    monkeypatch.setattr(attention_cuda, "bench_row", fake_row)
    monkeypatch.setattr(attention_cuda, "bench_suffix", lambda B, s, hkv, w, r: {
        "batch": B, "suffix": s, "q_heads": 32, "kv_heads": hkv, "head_dim": 128, "suffix_ms": 1.0,
        "suffix_gbps": 3200.0})
    out = tmp_path / "attention_cuda.json"
    assert attention_cuda.main(["--out", str(out)]) == 1  # one row failed
    data = json.loads(out.read_text())
    assert data["complete"] and data["mm_n"] == 8192 and len(data["suffix_rows"]) == len(attention_cuda.SUFFIX_GRID)
    assert data["rows"][3]["error"].startswith("OutOfMemoryError")
    assert gpu_record.suffix_copy_fraction(data)[0] == pytest.approx(0.75)
    assert gpu_record.prefix_mm_fraction(data)[0] == pytest.approx(0.5)


def test_attention_cuda_without_gpu(tmp_path):
    import attention_cuda

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    out = tmp_path / "a.json"
    assert attention_cuda.main(["--out", str(out)]) == 0
    data, why = gpu_record.load_json(str(out))
    assert data is None and why == "a.json: no CUDA GPU"


# ----------------------------------------------------------------------------- sanitizer, launches
MEMCHECK_LOG = """========= COMPUTE-SANITIZER
sanitizer cases: 36 calls ok
========= ERROR SUMMARY: 0 errors
"""
RACECHECK_LOG = """========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at attention_tc_kernel+0x1a0
sanitizer cases: 36 calls ok
========= RACECHECK SUMMARY: 3 hazards displayed (2 errors, 1 warning)
"""


def test_parse_sanitizer_log():
    assert gpu_record.parse_sanitizer_log(MEMCHECK_LOG) == {
        "errors": 0, "summary": "ERROR SUMMARY: 0 error", "calls_ok": 36}
    race = gpu_record.parse_sanitizer_log(RACECHECK_LOG)
    assert race["errors"] == 2 and race["warnings"] == 1 and race["calls_ok"] == 36
    cut = gpu_record.parse_sanitizer_log("========= COMPUTE-SANITIZER\n")  # killed: no summary
    assert cut == {"errors": None, "calls_ok": None}


def test_count_device_ops():
    from torch.autograd import DeviceType

    def ev(name, device=DeviceType.CUDA, activity=None):
        return SimpleNamespace(name=name, device_type=device, activity_type=activity)

    old_torch = [ev("aten::empty", DeviceType.CPU), ev("prefix_kernel"), ev("merge_kernel"),
                 ev("Memset (Device)"), ev("Memcpy DtoD (Device -> Device)")]
    assert gpu_record.count_device_ops(old_torch) == {
        "kernels": 2, "memsets": 1, "memcpys": 1, "kernel_names": ["prefix_kernel", "merge_kernel"], "total": 4}
    new_torch = [ev("cudaLaunchKernel", DeviceType.CPU, "cuda_runtime"), ev("k", activity="kernel"),
                 ev("annotation", activity="gpu_user_annotation"), ev("Memset (Device)", activity="gpu_memset")]
    counts = gpu_record.count_device_ops(new_torch)
    assert (counts["kernels"], counts["memsets"], counts["total"]) == (1, 1, 2)
    unknown_activity = [ev("k2", activity="some_future_kernel_kind"), ev("Memcpy HtoD", activity="")]
    assert gpu_record.count_device_ops(unknown_activity)["kernel_names"] == ["k2"]


def test_launch_cases_run_on_cpu_and_measuring_needs_a_gpu():
    import hydrogen_ops

    cases = gpu_record.launch_cases("cpu")
    assert set(cases) == {"one_level", "two_level", "one_level_batch1"}
    q, prefixes, suffix = cases["two_level"]
    assert len(prefixes) == 2 and prefixes[1][3].tolist() == [i * 4 // 64 for i in range(64)]
    out = hydrogen_ops.hydragen_attention(q, prefixes, suffix)
    assert out.shape == q.shape and torch.isfinite(out.float()).all()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            gpu_record.measure_launches()


def test_sanitizer_cases_run_on_cpu(capsys):
    import sanitizer_cases

    assert sanitizer_cases.main(["--device", "cpu"]) == 0
    n = len(sanitizer_cases.DTYPES) * len(sanitizer_cases.HEAD_DIMS) * 6
    assert gpu_record.parse_sanitizer_log(capsys.readouterr().out)["calls_ok"] == n


# ----------------------------------------------------------------------------- the record
def _results_dir(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "status.txt").write_text("commit=abc123\nbuild_rc=0\nstrict_files=tests/test_cuda.py tests/test_ops.py\n"
                                  "strict_rc=1\nrest_rc=0\nsanitizer=ran\nsanitizer_tool=/usr/local/cuda/bin/compute-sanitizer\n"
                                  "sanitizer_memcheck_rc=0\nsanitizer_racecheck_rc=0\nnot a key value line\n")
    (d / "junit_strict.xml").write_text(JUNIT)
    (d / "junit_rest.xml").write_text(JUNIT.replace("tests.test_cuda", "tests.test_hf")
                                      .replace("tests.test_ops", "tests.test_hf").replace("tests.test_api", "tests.test_hf"))
    (d / "attention_sweep_cuda.json").write_text(json.dumps(SWEEP))
    (d / "attention_sweep_flex_cuda.json").write_text(json.dumps(FLEX_SWEEP))
    (d / "attention_cuda.json").write_text(json.dumps(ATTN))
    (d / "launches.json").write_text(json.dumps({
        "device": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "cuda": "13.0", "python": "3.12.3"},
        "counts": {"one_level": {"per_call": 2, "kernel_names": ["a", "b"]}, "two_level": {"per_call": 3}}}))
    (d / "sanitizer_memcheck_log.txt").write_text(MEMCHECK_LOG)
    (d / "sanitizer_racecheck_log.txt").write_text(RACECHECK_LOG)
    return d


def test_assemble_full_record(tmp_path, capsys):
    d = _results_dir(tmp_path)
    out = tmp_path / "gpu_check.json"
    assert gpu_record.main(["assemble", "--results", str(d), "--out", str(out)]) == 0
    assert "tests: passed 8, failed 4, skipped 4, cuda_passed 3" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert RECORD_FIELDS <= set(rec)
    assert rec["csrc_sha256"] == gpu_record.csrc_sha256(ROOT)
    assert (rec["gpu"], rec["torch"]) == ("NVIDIA H200", "2.11.0+cu130")
    # test_cuda.py's passed cases count (1), elsewhere those with a "cuda" parameter (1 + 1)
    assert rec["tests"]["cuda_passed"] == 3
    assert {k: rec["tests"][k] for k in ("passed", "failed", "skipped")} == {"passed": 8, "failed": 4, "skipped": 4}
    assert rec["never_slower"]["min_ratio_vs_sdpa"] == pytest.approx(0.5) and len(rec["never_slower"]["rows"]) == 3
    assert rec["suffix_copy_fraction"] == pytest.approx(0.75) and rec["prefix_mm_fraction"] == pytest.approx(0.5)
    assert rec["launches_per_call"] == {"one_level": 2, "two_level": 3}
    assert rec["flex_ratio_1024_16384"] == pytest.approx(2.0) and rec["sdpa_ratio_256_16384"] == pytest.approx(15.0)
    assert rec["sanitizer"]["memcheck"] == {"errors": 0, "summary": "ERROR SUMMARY: 0 error", "calls_ok": 36, "rc": 0}
    assert rec["sanitizer"]["racecheck"]["errors"] == 2
    assert rec["check"]["commit"] == "abc123" and rec["test_steps"]["strict"]["rc"] == 1
    assert rec["missing"] == {}


def test_assemble_from_nothing_says_why_for_every_field(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "status.txt").write_text("build_rc=2\nsanitizer=absent\nsanitizer_note=compute-sanitizer not found\n")
    (d / "launches.json").write_text(json.dumps({"error": "RuntimeError: no CUDA GPU"}))
    rec = gpu_record.assemble(str(d), ROOT, info={"gpu": None, "torch": "2.14", "cuda": None})
    json.dumps(rec, allow_nan=False)
    assert RECORD_FIELDS <= set(rec)
    for field in RECORD_FIELDS - {"csrc_sha256", "torch", "date"}:
        assert rec[field] is None, field
        assert rec["missing"][field], field
    assert rec["missing"]["launches_per_call"] == "RuntimeError: no CUDA GPU"
    assert "attention_sweep_cuda.json was not written" in rec["missing"]["sdpa_ratio_256_16384"]
    assert rec["sanitizer"] == {"skipped": "compute-sanitizer not found"}


def test_partial_record_fields(tmp_path):
    d = _results_dir(tmp_path)
    (d / "attention_sweep_flex_cuda.json").unlink()
    (d / "attention_cuda.json").write_text(json.dumps(dict(ATTN, mm_n=4096)))
    (d / "attention_sweep_cuda.json").write_text(json.dumps(dict(SWEEP, complete=False, rows_planned=24)))
    rec = gpu_record.assemble(str(d), ROOT)
    assert rec["flex_ratio_1024_16384"] == pytest.approx(1.3 / 1.6)  # the main sweep's flex column
    assert rec["prefix_mm_fraction"] is None and "n = 4096" in rec["missing"]["prefix_mm_fraction"]
    assert rec["suffix_copy_fraction"] == pytest.approx(0.75)
    assert rec["never_slower"]["complete"] is False and "never_slower.complete" in rec["missing"]


def test_verify_compares_the_record_hash_with_the_checkout(tmp_path, capsys):
    _write(tmp_path / "src/csrc/cuda/k.cu", "kernel")
    record = tmp_path / "gpu_check.json"
    record.write_text(json.dumps({"csrc_sha256": gpu_record.csrc_sha256(str(tmp_path / "src"))}))
    assert gpu_record.main(["verify", str(record), "--root", str(tmp_path / "src")]) == 0
    _write(tmp_path / "src/csrc/cuda/k.cu", "kernel, edited after the run")
    assert gpu_record.main(["verify", str(record), "--root", str(tmp_path / "src")]) == 1
    assert "changed since the GPU run" in capsys.readouterr().out


def test_record_json_has_no_nan(tmp_path):
    path = tmp_path / "r.json"
    gpu_record.write(str(path), {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.0]}


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

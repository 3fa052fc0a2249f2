"""A seeded sample of the differential fuzz (tests/fuzz/fuzz_cases.py) in the normal test
run: the core group split over every CPU ISA variant, each in its own process, and on CUDA
when a GPU is present. HYDROGEN_FUZZ_CASES sets the core sample size (default 2000);
`python tests/fuzz/run_fuzz.py --cases 10000` is the long run.

The nan_contract group checks NaN propagation (NaN in, NaN out; -inf is the only empty
marker); `pytest tests/fuzz -m nan_contract` runs it alone.
"""

import os

import pytest
import torch

from run_fuzz import available_isas, repro_command, run_worker, spawn_worker

CORE_CASES = int(os.environ.get("HYDROGEN_FUZZ_CASES", "2000"))
CONTRACT_CASES = 300
SEED = 0
ISAS = available_isas()

def assert_no_failures(summary):
    lines = [
        f"case {f['index']}: {f['error']}\n    {f['what']}\n    repro: {repro_command(summary, SEED, f)}"
        for f in summary["failures"][:10]
    ]
    assert not summary["failures"], f"{len(summary['failures'])} of {summary['cases']} cases failed:\n" + "\n".join(lines)


@pytest.mark.parametrize("isa", ISAS)
def test_fuzz_core(isa):
    summary = spawn_worker(isa, "core", CORE_CASES, SEED, len(ISAS), ISAS.index(isa), timeout=600)
    assert summary["cases"] > 0
    assert_no_failures(summary)


@pytest.mark.nan_contract
@pytest.mark.parametrize("isa", ISAS)
def test_fuzz_nan_contract(isa):
    summary = spawn_worker(isa, "nan_contract", CONTRACT_CASES, SEED, len(ISAS), ISAS.index(isa), timeout=600)
    assert summary["cases"] > 0
    assert_no_failures(summary)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "group", ["core", pytest.param("nan_contract", marks=pytest.mark.nan_contract)]
)
def test_fuzz_cuda(group):
    summary = run_worker(group, range(500), SEED, "cuda")
    summary["isa"] = None
    assert_no_failures(summary)

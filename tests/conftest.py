import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]

# Elementwise tolerance: |ours - exact| <= EPS[dtype] * |exact| + ATOL[dtype]. EPS is one
# unit in the last place of the output dtype: a kernel that accumulates in fp32 and
# rounds once lands within half of it.
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
ATOL = {torch.float32: 5e-6, torch.bfloat16: 1e-5, torch.float16: 1e-5}


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def assert_close_to_exact(actual, exact, dtype, what="out"):
    """Asserts actual (any dtype) is within one output ulp of the float64 `exact`."""
    actual64 = actual.detach().double().cpu()
    exact = exact.cpu()
    err = (actual64 - exact).abs()
    bound = EPS[dtype] * exact.abs() + ATOL[dtype]
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"{what}: max error {err.max().item():.3e} exceeds the {dtype} bound"


def assert_lse_close(actual, exact, atol=2e-5):
    """LSE is float32 whatever the input dtype; -inf rows must match exactly."""
    actual = actual.cpu().double()
    exact = exact.cpu()
    assert torch.equal(torch.isneginf(actual), torch.isneginf(exact)), "lse: -inf rows differ"
    finite = torch.isfinite(exact)
    assert not torch.isnan(actual).any(), "lse has NaN"
    if finite.any():
        err = (actual[finite] - exact[finite]).abs().max().item()
        assert err <= atol + 2e-6 * exact[finite].abs().max().item(), f"lse: max error {err:.3e}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "nan_contract: NaN propagation checks (NaN in, NaN out; -inf is the only empty marker)"
    )

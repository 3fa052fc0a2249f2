"""Dispatcher integration (opcheck, torch.compile, autograd) and bad-input errors."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import hydrogen_ops as H


def small_problem(device, dtype=torch.float32):
    torch.manual_seed(0)
    q = torch.randn(3, 4, 2, 64, dtype=dtype, device=device)
    kp = torch.randn(2, 2, 10, 64, dtype=dtype, device=device)
    ks = torch.randn(3, 2, 6, 64, dtype=dtype, device=device)
    return q, kp, ks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_every_op(dtype, device):
    q, kp, ks = small_problem(device, dtype)
    lens_p = torch.tensor([10, 4], device=device)
    s2p = torch.tensor([1, 0, 1], device=device)
    lens_s = torch.tensor([6, 2, 5], device=device, dtype=torch.int32)
    torch.library.opcheck(torch.ops.hydrogen.prefix_attention, (q, kp, kp, lens_p, s2p, None, None))
    torch.library.opcheck(torch.ops.hydrogen.prefix_attention, (q, kp[:1], kp[:1], None, None, 0.5, torch.float32))
    torch.library.opcheck(torch.ops.hydrogen.suffix_attention, (q, ks, ks, lens_s, True, None, None))
    torch.library.opcheck(torch.ops.hydrogen.suffix_attention, (q, ks, ks, None, False, 0.2, torch.float32))
    o, l = H.suffix_attention(q, ks, ks)
    torch.library.opcheck(torch.ops.hydrogen.merge_attention, ([o, o], [l, l], None))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    q, kp, ks = small_problem(device)
    lens_s = torch.tensor([6, 2, 5], device=device)

    def decode(q, kp, ks, lens_s):
        out, lse = H.hydragen_attention(q, [(kp[:1], kp[:1], None, None)], (ks, ks, lens_s), return_lse=True)
        return out * 2 + 1, lse  # a fused epilogue around the ops for the compiler to generate

    compiled = torch.compile(decode, fullgraph=True, backend=backend)
    eager = decode(q, kp, ks, lens_s)
    got = compiled(q, kp, ks, lens_s)
    torch.testing.assert_close(got, eager, rtol=0, atol=0)


def test_backward_raises_clear_error(device):
    q, kp, ks = small_problem(device)
    q.requires_grad_(True)
    out, _ = H.suffix_attention(q, ks, ks)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


# Each case: (callable producing the bad call, words the message must contain).
def bad_calls(device):
    q, kp, ks = small_problem(device)
    o, l = H.suffix_attention(q, ks, ks)
    return {
        "q rank": (lambda: H.suffix_attention(q[0], ks, ks), r"q must have rank 4"),
        "k rank": (lambda: H.prefix_attention(q, kp[0], kp[0]), r"k must have rank 4"),
        "head_dim": (lambda: H.suffix_attention(q, ks[..., :32], ks[..., :32]), r"head_dim \(32\) must equal q head_dim \(64\)"),
        "k v shapes": (lambda: H.suffix_attention(q, ks, ks[:, :, :3]), r"k and v must have the same shape"),
        "gqa": (lambda: H.suffix_attention(q[:, :3], ks, ks), r"q_heads \(3\) must be a multiple of kv_heads \(2\)"),
        "dtype mix": (lambda: H.suffix_attention(q, ks.half(), ks.half()), r"q, k and v must share one dtype"),
        "dtype": (lambda: H.suffix_attention(q.double(), ks.double(), ks.double()), r"q must be float32, bfloat16 or float16"),
        "device mix": (lambda: H.suffix_attention(q, ks.to("meta"), ks.to("meta")), r"device"),
        "suffix batch": (lambda: H.suffix_attention(q, ks[:2], ks[:2]), r"expected k.shape\[0\] == 3, got 2"),
        "kv_lens shape": (lambda: H.suffix_attention(q, ks, ks, torch.tensor([6, 6], device=device)), r"kv_lens must have shape \[3\]"),
        "kv_lens dtype": (
            lambda: H.suffix_attention(q, ks, ks, torch.tensor([6.0, 6.0, 6.0], device=device)),
            r"kv_lens must be an int32 or int64 tensor",
        ),
        "seq_to_prefix missing": (lambda: H.prefix_attention(q, kp, kp), r"seq_to_prefix is required"),
        "seq_to_prefix shape": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, 1], device=device)),
            r"seq_to_prefix must have shape \[3\]",
        ),
        "dtype int": (
            lambda: H.prefix_attention(q.int(), kp[:1].int(), kp[:1].int()), r"q must be float32, bfloat16 or float16"
        ),
        "head_dim too large": (
            lambda: H.suffix_attention(q.new_zeros(3, 4, 1, 2048), ks.new_zeros(3, 2, 1, 2048), ks.new_zeros(3, 2, 1, 2048)),
            r"head_dim must be at most 1024",
        ),
        "scale nan": (lambda: H.suffix_attention(q, ks, ks, scale=float("nan")), r"scale must be finite"),
        "scale overflows float32": (lambda: H.prefix_attention(q, kp[:1], kp[:1], scale=1e300), r"scale must be finite in float32"),
        "out_dtype": (lambda: H.suffix_attention(q, ks, ks, out_dtype=torch.int32), r"out_dtype must be float32"),
        "out_dtype int64": (lambda: H.merge_attention([o], [l], out_dtype=torch.int64), r"out_dtype must be float32"),
        "merge lengths": (lambda: H.merge_attention([o, o], [l]), r"outs and lses must have the same length"),
        "merge empty": (lambda: H.merge_attention([], []), r"at least one tensor"),
        "merge shapes": (lambda: H.merge_attention([o, o[:, :1]], [l, l]), r"outs\[1\] has shape"),
        "merge lse shape": (lambda: H.merge_attention([o], [l[..., :1]]), r"lses\[0\] has shape"),
        "merge lse dtype": (lambda: H.merge_attention([o], [l.half()]), r"lses\[0\] must be float32"),
        "merge dtype mix": (lambda: H.merge_attention([o, o.half()], [l, l]), r"outs\[1\] has dtype"),
    }


CASES = list(bad_calls("cpu").keys())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_clear_error(case, device):
    call, message = bad_calls(device)[case]
    with pytest.raises(ValueError, match=message):
        call()


# Cases the fake kernels cannot see: the device ("meta" is what fake tensors run on) and
# the empty list, refused by the Python wrapper before the dispatcher.
FAKE_CASES = [c for c in CASES if c not in ("device mix", "merge empty")]


@pytest.mark.parametrize("case", FAKE_CASES)
def test_fake_kernels_refuse_what_real_kernels_refuse(case):
    """torch.compile traces with fake tensors: a bad call must fail there with the same
    message, not pass tracing and fail (or return a wrong dtype) at run time."""
    with FakeTensorMode():
        call, message = bad_calls("cpu")[case]
        with pytest.raises(ValueError, match=message):
            call()


def test_fake_kernels_give_real_shapes_and_dtypes():
    q, kp, ks = small_problem("cpu", torch.bfloat16)
    real = H.hydragen_attention(q, [(kp[:1], kp[:1], None, None)], (ks, ks, None), return_lse=True)
    with FakeTensorMode() as mode:
        fq, fkp, fks = (mode.from_tensor(t) for t in (q, kp, ks))
        fake = H.hydragen_attention(fq, [(fkp[:1], fkp[:1], None, None)], (fks, fks, None), return_lse=True)
    for r, f in zip(real, fake):
        assert (f.shape, f.dtype, f.device) == (r.shape, r.dtype, r.device)


def test_torch_compile_dynamic_batch_does_not_recompile():
    """The meta kernels read symbolic sizes, so one dynamic graph serves every batch size."""
    torch._dynamo.reset()
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    def decode(q, kp, ks, lens_s):
        return H.hydragen_attention(q, [(kp, kp, None, None)], (ks, ks, lens_s), return_lse=True)

    compiled = torch.compile(decode, fullgraph=True, dynamic=True, backend=counting_backend)
    torch.manual_seed(0)
    kp = torch.randn(1, 2, 10, 64)
    for B in (3, 5, 9, 17):
        q, ks = torch.randn(B, 4, 1, 64), torch.randn(B, 2, 6, 64)
        lens = torch.randint(1, 7, (B,))
        torch.testing.assert_close(compiled(q, kp, ks, lens), decode(q, kp, ks, lens), rtol=0, atol=0)
    assert len(compiles) == 1


# kv_lens and seq_to_prefix values are read on the host by the CPU kernels only: CUDA
# clamps them without a host synchronisation (tests/test_cuda.py, out-of-range tests).
def bad_values_cpu():
    q, kp, ks = small_problem("cpu")
    return {
        "kv_lens negative": (
            lambda: H.suffix_attention(q, ks, ks, torch.tensor([6, -1, 2])),
            r"kv_lens\[1\] = -1 is outside \[0, 6\]",
        ),
        "kv_lens too long": (
            lambda: H.prefix_attention(q, kp, kp, torch.tensor([11, 2]), torch.tensor([0, 1, 0])),
            r"kv_lens\[0\] = 11 is outside \[0, 10\]",
        ),
        "seq_to_prefix range": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, 2, 1])),
            r"seq_to_prefix\[1\] = 2 is outside \[0, 2\)",
        ),
        "seq_to_prefix negative": (
            lambda: H.prefix_attention(q, kp, kp, None, torch.tensor([0, -1, 1])),
            r"seq_to_prefix\[1\] = -1 is outside",
        ),
    }


@pytest.mark.parametrize("case", list(bad_values_cpu().keys()))
def test_bad_index_values_raise_on_cpu(case):
    call, message = bad_values_cpu()[case]
    with pytest.raises(ValueError, match=message):
        call()



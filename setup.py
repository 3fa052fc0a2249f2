"""Builds hydrogen_ops._C against the installed torch.

The CUDA sources are built when torch is a CUDA build and nvcc is found, whether or not
a GPU is present (build machines often have none). HYDROGEN_CPU_ONLY=1 forces a CPU-only
build. TORCH_CUDA_ARCH_LIST overrides the default architectures (8.0 and 9.0).
"""

import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_build_wanted():
    import torch

    if os.environ.get("HYDROGEN_CPU_ONLY", "0") not in ("", "0"):
        return False, "HYDROGEN_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, "this torch is not a CUDA build"
    if cpp_extension.CUDA_HOME is None:
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, ""


def extension():
    cxx_flags = ["-O3", "-ffp-contract=fast"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx_flags.append("-Wno-psabi")  # vector types passed between inlined ISA variants
    srcs = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    with_cuda, why_not = cuda_build_wanted()
    if not with_cuda:
        print(f"hydrogen_ops: building the CPU extension only ({why_not})")
        return cpp_extension.CppExtension("hydrogen_ops._C", srcs, extra_compile_args={"cxx": cxx_flags})
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "hydrogen_ops._C",
        srcs + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
    )


setup(
    packages=find_packages(include=["hydrogen_ops", "hydrogen_ops.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)

"""Builds hydrogen_ops._C against the installed torch.

The CUDA sources are built when torch is a CUDA build and nvcc is found, whether or not
a GPU is present (build machines often have none). HYDROGEN_CPU_ONLY=1 forces a CPU-only
build. TORCH_CUDA_ARCH_LIST overrides the default architectures (8.0 and 9.0).
"""

import glob
import os
import platform
import shutil

from setuptools import find_packages, setup


def _locate_nvcc():
    """Points CUDA_HOME at a toolkit before torch guesses it. Torch takes the parent of
    the nvcc on PATH, which is wrong when that nvcc is a wrapper script (/usr/local/bin):
    keep the first candidate that holds the CUDA headers."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


_locate_nvcc()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_build_wanted():
    import torch

    if os.environ.get("HYDROGEN_CPU_ONLY", "0") not in ("", "0"):
        return False, "HYDROGEN_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, "this torch is not a CUDA build"
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, ""


class BuildExtension(cpp_extension.BuildExtension):
    """Says once, at build time, when the CUDA sources are left out."""

    def run(self):
        with_cuda, why_not = cuda_build_wanted()
        if not with_cuda:
            print(f"hydrogen_ops: building the CPU extension only ({why_not})")
        super().run()


def extension():
    cxx_flags = ["-O3", "-ffp-contract=fast"]
    link_flags = []
    if platform.system() == "Linux":
        # at::parallel_for is an inline OpenMP region: without -fopenmp it runs serially.
        # The loader shares torch's already loaded libgomp.so.1 with this library.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if platform.machine() in ("x86_64", "AMD64"):
        cxx_flags.append("-Wno-psabi")  # vector types passed between inlined ISA variants
    srcs = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if not cuda_build_wanted()[0]:
        return cpp_extension.CppExtension(
            "hydrogen_ops._C", srcs, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "hydrogen_ops._C",
        srcs + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


setup(
    packages=find_packages(include=["hydrogen_ops", "hydrogen_ops.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)

"""Builds hydrogen_ops._C against the installed torch.

The CUDA sources are built when torch is a CUDA build and nvcc is found, whether or not
a GPU is present (build machines often have none). HYDROGEN_CPU_ONLY=1 forces a CPU-only
build. TORCH_CUDA_ARCH_LIST overrides the default architectures (8.0 and 9.0).

Each build is named after the torch it is built against: the version gets a local tag
(0.1.0+pt214cu130, 0.1.0+pt214cpu) and hydrogen_ops/_build_info.py is written beside the
extension, which the package checks at import. Builds for installation (pip install,
wheels) strip the extension's debug sections (HYDROGEN_KEEP_DEBUG_INFO=1 keeps them).
"""

import glob
import importlib.util
import os
import platform
import runpy
import shutil
import subprocess
import sys

import setuptools

ROOT = os.path.dirname(os.path.abspath(__file__))
MIN_SETUPTOOLS = 77  # SPDX license strings in pyproject.toml


def _require_build_tools():
    """The extension compiles against the torch of the environment that builds it, which
    `pip install --no-build-isolation` leaves as it is: say what is missing, instead of a
    traceback ending in `No module named 'torch'`."""
    if importlib.util.find_spec("torch") is None:
        sys.exit(
            "\nhydrogen_ops: install torch first. The extension is compiled against the torch "
            f"of the Python environment that builds it ({sys.executable}), and it has none:\n"
            "    pip install torch    # or the build for your CUDA version, see pytorch.org\n"
            "    pip install --no-build-isolation .\n"
        )
    if int(setuptools.__version__.split(".")[0]) < MIN_SETUPTOOLS:
        sys.exit(
            f"\nhydrogen_ops: building needs setuptools>={MIN_SETUPTOOLS}; this environment has "
            f"{setuptools.__version__}:\n"
            f'    pip install "setuptools>={MIN_SETUPTOOLS}"\n'
            "    pip install --no-build-isolation .\n"
        )


def _load_build_compat():
    """hydrogen_ops/_build_compat.py, loaded by path: importing the package needs the
    extension that is about to be built."""
    path = os.path.join(ROOT, "hydrogen_ops", "_build_compat.py")
    spec = importlib.util.spec_from_file_location("hydrogen_ops_build_compat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


_require_build_tools()
_locate_nvcc()
import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

build_compat = _load_build_compat()


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cuda_build_wanted():
    if os.environ.get("HYDROGEN_CPU_ONLY", "0") not in ("", "0"):
        return False, "HYDROGEN_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, "this torch is not a CUDA build"
    home = cpp_extension.CUDA_HOME
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, ""


def built_cuda_version():
    """The CUDA version the compiled kernels are for; None when only the CPU ones are built."""
    return torch.version.cuda if cuda_build_wanted()[0] else None


def version():
    base = runpy.run_path(os.path.join(ROOT, "hydrogen_ops", "_version.py"))["__version__"]
    return f"{base}+{build_compat.build_tag(torch.__version__, built_cuda_version())}"


class BuildExtension(cpp_extension.BuildExtension):
    """Names the build after its torch, writing _build_info.py beside the extension.
    An extension built for another torch is rebuilt from scratch: its sources have not
    changed, so its objects would be reused (a switch between CPU-only and CUDA builds of
    one torch keeps them). An extension built for installation (pip, wheels) loses its
    debug sections, a third of the CUDA library and nearly all of the CPU-only one;
    in-place builds keep them."""

    def run(self):
        with_cuda, why_not = cuda_build_wanted()
        if not with_cuda:
            print(f"hydrogen_ops: building the CPU extension only ({why_not})")
        library = self.get_ext_fullpath("hydrogen_ops._C")
        info_path = os.path.join(os.path.dirname(library), build_compat.BUILD_INFO_FILE)
        info = build_compat.build_info_source(torch.__version__, built_cuda_version())
        recorded = runpy.run_path(info_path) if os.path.exists(info_path) else None
        if recorded is None or open(info_path).read() != info:
            self.force = True  # an extension without this build's info is not reused
        if recorded is not None and recorded["torch_version"] != torch.__version__:
            shutil.rmtree(self.build_temp, ignore_errors=True)
        super().run()
        os.makedirs(os.path.dirname(info_path), exist_ok=True)
        with open(info_path, "w") as f:
            f.write(info)
        for_install = not (self.inplace or getattr(self, "editable_mode", False))
        if for_install and os.environ.get("HYDROGEN_KEEP_DEBUG_INFO", "0") in ("", "0"):
            strip_debug_info(library)


def strip_debug_info(path):
    """Removes the debug sections of a shared library in place (its symbols stay)."""
    strip = shutil.which("strip")
    if strip is None:
        print(f"hydrogen_ops: `strip` was not found; {os.path.basename(path)} keeps its debug sections")
        return
    subprocess.run([strip, "-S", path], check=True)


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
    version=version(),
    packages=find_packages(include=["hydrogen_ops", "hydrogen_ops.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)

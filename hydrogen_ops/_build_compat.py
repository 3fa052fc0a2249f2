"""Which torch a build of ``hydrogen_ops._C`` was made for, and whether the installed one fits.

A compiled extension only loads under the torch (and CUDA) it was built against; under
another one the loader fails with a missing ``libc10_cuda.so`` or an undefined symbol.
setup.py names each build (the local version tag, ``+pt214cu130``) and writes
``_build_info.py`` beside the extension; the package compares it with the installed torch
before loading the extension, so a mismatch says what to rebuild instead. setup.py loads
this file by path: it must not import torch or the package at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

BUILD_INFO_FILE = "_build_info.py"
INSTALL_COMMAND = "pip install --no-build-isolation ."
INPLACE_COMMAND = "python setup.py build_ext --inplace"


def _major_minor(version: str) -> tuple:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def build_tag(torch_version: str, cuda_version: Optional[str]) -> str:
    """The local version label of a build: ``pt214cu130`` for the CUDA kernels built
    against torch 2.14 with CUDA 13.0, ``pt214cpu`` for the CPU kernels only."""
    major, minor = _major_minor(torch_version)
    device = "cu" + cuda_version.replace(".", "") if cuda_version else "cpu"
    return f"pt{major}{minor}{device}"


def build_info_source(torch_version: str, cuda_version: Optional[str]) -> str:
    """The text of ``_build_info.py`` for a build against ``torch_version``; ``cuda_version``
    is the CUDA version of the compiled CUDA kernels, None when only the CPU ones are built."""
    return (
        "# Written by setup.py when the extension was built: the torch it was built against.\n"
        f"torch_version = {torch_version!r}\n"
        f"cuda_version = {cuda_version!r}  # None: CPU kernels only\n"
        f"tag = {build_tag(torch_version, cuda_version)!r}\n"
    )


def incompatibility(
    built_torch: str, built_cuda: Optional[str], torch_version: str, torch_cuda: Optional[str]
) -> Optional[str]:
    """Why a build for torch ``built_torch`` (CUDA kernels for ``built_cuda``, or None) cannot
    load under torch ``torch_version`` (a CUDA ``torch_cuda`` build, or None), or None when it
    can. torch keeps its C++ ABI within a minor release, CUDA its runtime within a major one."""
    if _major_minor(built_torch) != _major_minor(torch_version):
        return f"it was built for torch {built_torch}, but torch {torch_version} is installed"
    if built_cuda is not None and torch_cuda is None:
        return (
            f"it was built with CUDA {built_cuda} kernels for torch {built_torch}, "
            f"but the installed torch {torch_version} is a CPU-only build"
        )
    if built_cuda is not None and built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
        return (
            f"it was built for torch {built_torch} with CUDA {built_cuda}, "
            f"but the installed torch {torch_version} uses CUDA {torch_cuda}"
        )
    return None


def _source_root(package_dir: str) -> Optional[str]:
    """The checkout that holds ``package_dir``, or None for an installed package."""
    root = os.path.dirname(os.path.abspath(package_dir))
    is_checkout = os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc"))
    return root if is_checkout else None


def rebuild_advice(package_dir: str) -> str:
    root = _source_root(package_dir)
    if root is not None:
        return f"Rebuild it in place: `cd {root} && {INPLACE_COMMAND}`"
    return (
        f"Reinstall it from the hydrogen_ops source folder with `{INSTALL_COMMAND}` (plain "
        "`pip install .` builds against whatever torch pip downloads into its isolated build "
        "environment), or install the torch it was built for"
    )


def _missing_extension_message(package_dir: str) -> str:
    root = _source_root(package_dir)
    if root is None:
        return (
            f"hydrogen_ops has no compiled extension (hydrogen_ops._C) in {package_dir}. "
            f"{rebuild_advice(package_dir)}."
        )
    return (
        f"hydrogen_ops is being imported from the source tree at {root}, where the extension "
        "(hydrogen_ops/_C*.so) has not been built; it shadows any installed hydrogen_ops because "
        "Python looks in the current folder first. Build in place with "
        f"`cd {root} && {INPLACE_COMMAND}`, or run Python from another folder to use the installed package."
    )


def load_extension():
    """Loads ``hydrogen_ops._C`` after checking its build against the installed torch.
    Returns the build info module (None for a build that has none) or raises ImportError
    with the fix."""
    import torch

    package_dir = os.path.dirname(os.path.abspath(__file__))

    try:
        info = importlib.import_module("hydrogen_ops._build_info")
    except ModuleNotFoundError as err:
        if err.name != "hydrogen_ops._build_info":
            raise
        info = None  # built before builds were named: nothing to compare
    if info is not None:
        problem = incompatibility(info.torch_version, info.cuda_version, torch.__version__, torch.version.cuda)
        if problem is not None:
            raise ImportError(
                f"hydrogen_ops cannot load its compiled extension: {problem}. {rebuild_advice(package_dir)}."
            )
    if importlib.util.find_spec("hydrogen_ops._C") is None:
        raise ImportError(_missing_extension_message(package_dir))
    try:
        importlib.import_module("hydrogen_ops._C")
    except (ImportError, OSError) as err:
        built_for = f"torch {info.torch_version}" if info is not None else "an unrecorded torch"
        raise ImportError(
            f"hydrogen_ops could not load its compiled extension, built for {built_for}, under the "
            f"installed torch {torch.__version__} ({err}). {rebuild_advice(package_dir)}."
        ) from err
    return info

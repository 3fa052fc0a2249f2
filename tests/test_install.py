"""Installation: what a build records about the torch it was made for, what a user is told
when torch is missing, mismatched or the extension is absent, and the packaging metadata.

Nothing here compiles the extension: builds run with the compile step replaced, wheels are
packed around a small stand-in library, and errors are provoked in copies of the tree.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest
import torch
from packaging.specifiers import SpecifierSet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXT_NAME = "_C" + sysconfig.get_config_var("EXT_SUFFIX")
REBUILD_COMMAND = "pip install --no-build-isolation ."
INPLACE_COMMAND = "python setup.py build_ext --inplace"


def load_build_compat():
    """hydrogen_ops/_build_compat.py by path, as setup.py loads it (no extension needed)."""
    spec = importlib.util.spec_from_file_location("build_compat_under_test", os.path.join(ROOT, "hydrogen_ops", "_build_compat.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_compat = load_build_compat()
BASE_VERSION = {}
exec(open(os.path.join(ROOT, "hydrogen_ops", "_version.py")).read(), BASE_VERSION)
BASE_VERSION = BASE_VERSION["__version__"]


def copy_source_tree(dst):
    """The files a build reads, without any compiled extension or build info."""
    os.makedirs(dst, exist_ok=True)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), dst)
    shutil.copytree(os.path.join(ROOT, "csrc"), os.path.join(dst, "csrc"))
    copy_package(os.path.join(dst, "hydrogen_ops"))
    return dst


def copy_package(dst):
    os.makedirs(dst)
    for name in os.listdir(os.path.join(ROOT, "hydrogen_ops")):
        if name.endswith(".py") and name != build_compat.BUILD_INFO_FILE or name == "py.typed":
            shutil.copy(os.path.join(ROOT, "hydrogen_ops", name), dst)


def write_build_info(package_dir, torch_version, cuda_version):
    with open(os.path.join(package_dir, build_compat.BUILD_INFO_FILE), "w") as f:
        f.write(build_compat.build_info_source(torch_version, cuda_version))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDROGEN_CPU_ONLY")}
    env.update(extra)
    return env


def run(args, cwd, **env):
    return subprocess.run(args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=300)


def import_error(cwd, **env):
    """The ImportError text of `import hydrogen_ops` run in cwd (which must fail)."""
    probe = (
        "import hydrogen_ops\n"
        "raise SystemExit('imported ' + hydrogen_ops.__file__)\n"
    )
    result = run([sys.executable, "-c", probe], cwd, **env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "ImportError" in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


# ---- building without torch -------------------------------------------------------------


@pytest.fixture(scope="module")
def venv_without_torch(tmp_path_factory):
    """A fresh venv (the pip and setuptools that Python bundles, no torch), its setuptools
    version, and a copy of the tree."""
    base = tmp_path_factory.mktemp("bare")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=120)
    python = str(base / "venv" / "bin" / "python")
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    assert not has_torch, "a fresh venv must not see torch"
    probe = subprocess.run([python, "-c", "import setuptools; print(setuptools.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:  # Python >= 3.12 bundles no setuptools, and pip then fails before setup.py runs
        pytest.skip("this Python's venv has no bundled setuptools to run setup.py with")
    return python, probe.stdout.strip(), copy_source_tree(str(base / "src"))


def pip_install_no_isolation(python, src, **env):
    return run([python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps", src], src, **env)


def test_pip_install_without_torch_says_install_torch_first(venv_without_torch):
    python, _, src = venv_without_torch
    result = pip_install_no_isolation(python, src)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "install torch first" in output, output
    assert "pip install torch" in output and REBUILD_COMMAND in output, output
    assert "Traceback" not in output, output


def test_pip_install_with_old_setuptools_names_the_version_needed(venv_without_torch, tmp_path):
    python, old, src = venv_without_torch
    if int(old.split(".")[0]) >= 77:
        pytest.skip(f"the setuptools this Python bundles ({old}) is recent enough")
    fake_torch = tmp_path / "torch"  # found, never imported: the setuptools check comes first
    fake_torch.mkdir()
    (fake_torch / "__init__.py").write_text("raise ImportError('stand-in torch')\n")
    result = pip_install_no_isolation(python, src, PYTHONPATH=str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'pip install "setuptools>=77"' in output and old in output, output
    assert "Traceback" not in output, output


# ---- the torch a build is made for --------------------------------------------------------


def test_build_tag_names_torch_minor_and_cuda():
    assert build_compat.build_tag("2.14.1+cu130", "13.0") == "pt214cu130"
    assert build_compat.build_tag("2.14.1+cu130", None) == "pt214cpu"
    assert build_compat.build_tag("2.11.0", "12.8") == "pt211cu128"


def test_version_carries_the_torch_tag():
    result = run([sys.executable, "setup.py", "--version"], ROOT, HYDROGEN_CPU_ONLY="1")
    assert result.returncode == 0, result.stderr
    major, minor = torch.__version__.split(".")[:2]
    assert result.stdout.strip().splitlines()[-1] == f"{BASE_VERSION}+pt{major}{minor}cpu"


# setup.py run as a build would run it, with the compile step replaced by a small stand-in
# library built with debug info: what is left is what setup.py itself does around the build.
BUILD_WITHOUT_COMPILING = """
import os, runpy, subprocess, sys
from torch.utils import cpp_extension

def compile_stand_in(self):
    print("compile step")
    library = self.get_ext_fullpath("hydrogen_ops._C")
    os.makedirs(os.path.dirname(library), exist_ok=True)
    with open("stand_in.c", "w") as f:
        f.write("int hydrogen_stand_in(int x) { return x + 1; }\\n")
    subprocess.run(["cc", "-g", "-shared", "-fPIC", "-o", library, "stand_in.c"], check=True)

cpp_extension.BuildExtension.run = compile_stand_in
sys.argv = ["setup.py"] + sys.argv[1:]
runpy.run_path("setup.py", run_name="__main__")
"""


def build_without_compiling(src, *args, **env):
    result = run([sys.executable, "-c", BUILD_WITHOUT_COMPILING, *args], src, HYDROGEN_CPU_ONLY="1", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def read_build_info(package_dir):
    values = {}
    exec(open(os.path.join(package_dir, build_compat.BUILD_INFO_FILE)).read(), values)
    return values


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "build_lib"])
def test_build_writes_build_info_beside_the_extension(tmp_path, inplace):
    src = copy_source_tree(str(tmp_path))
    if inplace:  # the command tests/setup_env.sh runs
        build_without_compiling(src, "build_ext", "--inplace")
        package_dir = os.path.join(src, "hydrogen_ops")
    else:  # what `pip install` and wheel builds run
        build_without_compiling(src, "build_ext", "--build-lib", "out")
        package_dir = os.path.join(src, "out", "hydrogen_ops")
    info = read_build_info(package_dir)
    major, minor = torch.__version__.split(".")[:2]
    assert info["torch_version"] == torch.__version__
    assert info["cuda_version"] is None  # HYDROGEN_CPU_ONLY: no CUDA kernels compiled
    assert info["tag"] == f"pt{major}{minor}cpu"


@pytest.mark.parametrize(
    "recorded_torch, recorded_cuda, objects_kept",
    [("1.13.1", None, False), (torch.__version__, None, True), (torch.__version__, "12.0", True)],
    ids=["other-torch", "same-build", "cuda-build-before"],
)
def test_objects_of_a_build_for_another_torch_are_not_reused(tmp_path, recorded_torch, recorded_cuda, objects_kept):
    src = copy_source_tree(str(tmp_path))
    write_build_info(os.path.join(src, "hydrogen_ops"), recorded_torch, recorded_cuda)
    compiled = tmp_path / "build" / "temp" / "ops.o"
    compiled.parent.mkdir(parents=True)
    compiled.write_text(f"object built against torch {recorded_torch}")
    assert "compile step" in build_without_compiling(src, "build_ext", "--inplace", "--build-temp", "build/temp")
    assert compiled.exists() == objects_kept
    assert read_build_info(os.path.join(src, "hydrogen_ops"))["torch_version"] == torch.__version__


@pytest.mark.parametrize(
    "built_torch, built_cuda, torch_version, torch_cuda, problem",
    [
        ("2.14.1+cu130", "13.0", "2.14.0+cu130", "13.0", None),  # patch releases keep the ABI
        ("2.14.1+cu130", None, "2.14.1+cpu", None, None),  # CPU kernels load under any 2.14
        ("2.14.1", None, "2.14.1+cu130", "13.0", None),
        ("2.14.1+cu128", "12.8", "2.14.1+cu126", "12.6", None),  # one CUDA major: one runtime
        ("2.13.0+cu126", "12.6", "2.14.1+cu130", "13.0", "built for torch 2.13.0+cu126, but torch 2.14.1+cu130 is installed"),
        ("2.14.1+cu130", "13.0", "2.14.1+cpu", None, "the installed torch 2.14.1+cpu is a CPU-only build"),
        ("2.14.1+cu128", "12.8", "2.14.1+cu130", "13.0", "with CUDA 12.8, but the installed torch 2.14.1+cu130 uses CUDA 13.0"),
    ],
)
def test_incompatibility(built_torch, built_cuda, torch_version, torch_cuda, problem):
    found = build_compat.incompatibility(built_torch, built_cuda, torch_version, torch_cuda)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


OTHER_TORCH = ("1.13.1+cu117", "11.7")  # older than any torch this package supports


def test_import_under_another_torch_names_both_versions_in_a_checkout(tmp_path):
    src = copy_source_tree(str(tmp_path))
    write_build_info(os.path.join(src, "hydrogen_ops"), *OTHER_TORCH)
    message = import_error(src)
    assert OTHER_TORCH[0] in message and torch.__version__ in message, message
    assert f"cd {src} && {INPLACE_COMMAND}" in message, message


def test_import_under_another_torch_names_both_versions_when_installed(tmp_path):
    site = tmp_path / "site"
    copy_package(str(site / "hydrogen_ops"))
    write_build_info(str(site / "hydrogen_ops"), *OTHER_TORCH)
    (site / "hydrogen_ops" / EXT_NAME).write_bytes(b"")  # never reached: the check comes first
    message = import_error(str(tmp_path), PYTHONPATH=str(site))
    assert OTHER_TORCH[0] in message and torch.__version__ in message, message
    assert REBUILD_COMMAND in message, message


def test_extension_that_fails_to_load_is_reported_with_its_build(tmp_path):
    site = tmp_path / "site"
    copy_package(str(site / "hydrogen_ops"))
    write_build_info(str(site / "hydrogen_ops"), torch.__version__, torch.version.cuda)
    (site / "hydrogen_ops" / EXT_NAME).write_bytes(b"not a shared library")
    message = import_error(str(tmp_path), PYTHONPATH=str(site))
    assert "could not load its compiled extension" in message, message
    assert f"built for torch {torch.__version__}" in message and REBUILD_COMMAND in message, message


# ---- a checkout without the extension ----------------------------------------------------


def test_source_tree_without_extension_says_how_to_build(tmp_path):
    src = copy_source_tree(str(tmp_path))
    message = import_error(src)
    assert "circular import" not in message, message
    assert f"source tree at {src}" in message, message
    assert f"cd {src} && {INPLACE_COMMAND}" in message and "another folder" in message, message


# ---- packaging ---------------------------------------------------------------------------


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_pyproject_follows_packaging_conventions():
    config = pyproject()
    project = config["project"]
    assert project["license"] == "Apache-2.0"  # an SPDX expression, not a table
    assert project["license-files"] == ["LICENSE"]
    license_text = open(os.path.join(ROOT, "LICENSE")).read()
    assert re.match(r"\s*Apache License\s+Version 2\.0, January 2004", license_text)
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert project["urls"] and project["classifiers"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # refused next to an SPDX license
    assert set(project["optional-dependencies"]) >= {"hf", "test"}
    setuptools_req = next(r for r in config["build-system"]["requires"] if r.startswith("setuptools"))
    allowed = SpecifierSet(setuptools_req[len("setuptools"):])
    assert "77.0" in allowed and "76.9" not in allowed
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["hydrogen_ops"]
    assert os.path.isfile(os.path.join(ROOT, "hydrogen_ops", "py.typed"))


def test_version_is_set_in_one_place():
    assert "version" not in pyproject()["project"] and "version" in pyproject()["project"]["dynamic"]
    setters = []
    for folder in (ROOT, os.path.join(ROOT, "hydrogen_ops")):
        for name in os.listdir(folder):
            if name.endswith((".py", ".toml")):
                if re.search(r'^\s*(__version__|version)\s*=\s*["\']\d', open(os.path.join(folder, name)).read(), re.M):
                    setters.append(name)
    assert setters == ["_version.py"]


def elf_section_names(path):
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils, which the extension build needs too) is missing"
    out = subprocess.run([readelf, "-S", "-W", path], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\]\s+(\.\S+)", out))


def has_debug_info(path):
    sections = elf_section_names(path)
    assert ".text" in sections, sections
    return any(s.startswith(".debug") for s in sections)


def test_wheel_is_tagged_typed_licensed_and_stripped(tmp_path):
    src = copy_source_tree(str(tmp_path / "src"))
    build_without_compiling(src, "bdist_wheel", "--dist-dir", "dist")
    (wheel,) = os.listdir(os.path.join(src, "dist"))
    major, minor = torch.__version__.split(".")[:2]
    version = f"{BASE_VERSION}+pt{major}{minor}cpu"
    assert wheel.startswith(f"hydrogen_ops-{version}-"), wheel
    with zipfile.ZipFile(os.path.join(src, "dist", wheel)) as zf:
        names = zf.namelist()
        metadata = zf.read(f"hydrogen_ops-{version}.dist-info/METADATA").decode()
        zf.extractall(tmp_path / "unpacked")
    assert "hydrogen_ops/py.typed" in names and "hydrogen_ops/_build_info.py" in names
    assert f"hydrogen_ops-{version}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata and "Project-URL:" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert read_build_info(str(tmp_path / "unpacked" / "hydrogen_ops"))["tag"] == f"pt{major}{minor}cpu"
    assert not has_debug_info(str(tmp_path / "unpacked" / "hydrogen_ops" / EXT_NAME))


@pytest.mark.parametrize("keep", ["inplace", "HYDROGEN_KEEP_DEBUG_INFO"])
def test_debug_info_is_kept_in_place_or_on_request(tmp_path, keep):
    src = copy_source_tree(str(tmp_path))
    if keep == "inplace":
        build_without_compiling(src, "build_ext", "--inplace")
        library = os.path.join(src, "hydrogen_ops", EXT_NAME)
    else:
        build_without_compiling(src, "build_ext", "--build-lib", "out", HYDROGEN_KEEP_DEBUG_INFO="1")
        library = os.path.join(src, "out", "hydrogen_ops", EXT_NAME)
    assert has_debug_info(library)

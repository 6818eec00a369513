"""The CMake build's CPU-only route for a CUDA build of torch.

find_package(Torch) of a CUDA torch demands a complete CUDA toolkit even when nothing but C++
is compiled, so setup.py hands CMakeLists.txt the torch folder instead when
SUPERTHOUGHTS_WITH_CUDA=0 meets a CUDA torch. The route is the same for any torch, so the
CPU torch installed here exercises it: configure only, in a temporary build folder.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def cmake_executable() -> str:
    cmake = pytest.importorskip("cmake")
    return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")


def cache_entries(build: Path) -> dict[str, str]:
    entries = {}
    for line in (build / "CMakeCache.txt").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "//")):
            key, value = line.split("=", 1)
            entries[key.split(":")[0]] = value
    return entries


def test_cpu_only_route_configures_from_the_torch_folder_alone(tmp_path):
    torch_dir = Path(torch.__file__).resolve().parent
    result = subprocess.run(
        [cmake_executable(), "-S", str(ROOT), "-B", str(tmp_path),
         f"-DPython3_EXECUTABLE={sys.executable}", "-DSUPERTHOUGHTS_WITH_CUDA=OFF",
         f"-DSUPERTHOUGHTS_CPU_ONLY_TORCH_DIR={torch_dir}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cache = cache_entries(tmp_path)
    assert "Torch_DIR" not in cache, "the CPU-only route must not run find_package(Torch)"
    for lib in ("torch", "torch_cpu", "c10"):
        found = Path(cache[f"SUPERTHOUGHTS_TORCH_{lib}"])
        assert found.parent == torch_dir / "lib" and found.name.startswith(f"lib{lib}."), found
    # The torch version recorded in build_info() comes from torch's own version file.
    flags = (tmp_path / "build.ninja").read_text() if (tmp_path / "build.ninja").exists() else ""
    flags += "".join(p.read_text() for p in tmp_path.rglob("flags.make"))
    assert f'SUPERTHOUGHTS_TORCH_VERSION=\\"{torch.__version__.split("+")[0]}\\"' in flags


def test_package_metadata_builds_without_setuptools_deprecations(tmp_path):
    """The license goes in the form the installed setuptools knows: no deprecation warning
    (setuptools turns its deprecations into errors after their deadline)."""
    script = (
        "import warnings\n"
        "from setuptools import build_meta\n"
        "from setuptools.warnings import SetuptoolsDeprecationWarning\n"
        "warnings.simplefilter('error', SetuptoolsDeprecationWarning)\n"
        f"print(build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metadata = (tmp_path / result.stdout.split()[-1] / "METADATA").read_text()
    assert "Apache-2.0" in metadata
    assert "Name: superthoughts_ext" in metadata or "Name: superthoughts-ext" in metadata
    # The license text travels with the package (Apache-2.0 asks for it in every distribution).
    info = tmp_path / result.stdout.split()[-1]
    assert "Apache License" in "".join(p.read_text() for p in info.rglob("LICENSE*")), list(info.rglob("*"))


def test_a_core_built_for_another_torch_is_refused(monkeypatch):
    # torch's C++ ABI changes between releases: a core built against another one loaded silently
    # and failed later with an undefined symbol, or crashed.
    import superthoughts_ext
    from superthoughts_ext import _C

    assert superthoughts_ext.load_core() is _C  # this checkout's build matches its torch
    monkeypatch.setattr(_C, "torch_version", "1.13.1")
    with pytest.raises(ImportError, match=rf"built against torch 1.13.1, but torch {re.escape(torch.__version__)} is installed; "
                                          r"rebuild it against this torch: pip install --no-build-isolation \."):
        superthoughts_ext.load_core()


def test_forcing_cuda_with_a_cpu_torch_is_refused_by_name(tmp_path):
    if torch.version.cuda is not None:
        pytest.skip("needs a CPU-only torch")
    # It failed deep in the compile, on a missing c10/cuda header.
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "build_ext", "--build-temp", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "SUPERTHOUGHTS_WITH_CUDA": "1"})
    assert result.returncode != 0
    assert f"torch {torch.__version__} is a CPU-only build" in result.stderr, result.stderr[-2000:]


def load_setup_script(monkeypatch):
    """setup.py as a module, its setup() call made a no-op."""
    import importlib.util

    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    spec = importlib.util.spec_from_file_location("superthoughts_setup_script", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cmake_build_folder_outlives_pip_and_is_keyed_on_python_torch_and_cuda(monkeypatch):
    # pip gives an editable build a new temporary build_temp each time: every `make build`
    # recompiled everything.
    script = load_setup_script(monkeypatch)

    class FakeTorch:
        __version__ = "0.0.1+another"  # never the installed torch

    cpu, cuda = script.cmake_build_dir(torch, False), script.cmake_build_dir(torch, True)
    assert cpu == script.cmake_build_dir(torch, False)
    assert cpu.parent == ROOT / "build" / "cmake"
    assert len({cpu, cuda, script.cmake_build_dir(FakeTorch, False)}) == 3
    assert f"py{sys.version_info.major}{sys.version_info.minor}" in cpu.name


def test_a_toolkit_without_nvrtc_borrows_the_one_beside_a_pypi_torch(monkeypatch, tmp_path):
    # torch's CMake config stops at a missing libnvrtc (seen with the CUDA 13.0 toolkit of the
    # CPU machines, which has none, and PyPI's torch 2.14.1+cu130); the nvidia wheel beside it has one.
    script = load_setup_script(monkeypatch)
    site, toolkit = tmp_path / "site-packages", tmp_path / "cuda"
    (site / "torch").mkdir(parents=True)
    (toolkit / "lib64").mkdir(parents=True)
    (toolkit / "lib64" / "libcudart.so.13").touch()
    assert script.wheel_nvrtc(site / "torch", str(toolkit), "13.0") is None  # nothing to borrow: CMake reports it

    wheel_lib, old_lib = site / "nvidia" / "cu13" / "lib", site / "nvidia" / "cuda_nvrtc" / "lib"
    for folder, names in ((wheel_lib, ("libnvrtc-builtins.so.13.0", "libnvrtc.alt.so.13", "libnvrtc.so.13")),
                          (old_lib, ("libnvrtc.so.12",))):  # a venv moved from a cu12 torch keeps its wheel
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).touch()
    assert script.wheel_nvrtc(site / "torch", str(toolkit), "13.0") == wheel_lib / "libnvrtc.so.13"
    assert script.wheel_nvrtc(site / "torch", str(toolkit), "12.8") == old_lib / "libnvrtc.so.12"

    # A toolkit with its own libnvrtc (in any of its library folders) keeps it.
    (toolkit / "targets" / "x86_64-linux" / "lib").mkdir(parents=True)
    (toolkit / "targets" / "x86_64-linux" / "lib" / "libnvrtc.so").touch()
    assert script.wheel_nvrtc(site / "torch", str(toolkit), "13.0") is None


def test_the_sdist_holds_what_the_build_needs(tmp_path):
    # Without MANIFEST.in the sdist held the Python package only: no CMakeLists.txt or csrc/, so
    # `pip install superthoughts_ext-*.tar.gz` stopped in CMake.
    import shutil
    import tarfile

    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".pytest_cache", "python_tests"))
    result = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=source,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(next((tmp_path / "dist").glob("*.tar.gz"))) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = {"CMakeLists.txt", "setup.py", "pyproject.toml", "LICENSE", "README.md", "superthoughts_ext/__init__.py"}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}  # the pages README.md links
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert wanted <= names, sorted(wanted - names)


def test_an_old_or_missing_cmake_is_named_with_its_fix(monkeypatch, tmp_path):
    # --no-build-isolation skips pyproject's build requirements: Debian's CMake 3.25 failed in
    # cmake_minimum_required with nothing saying what to install.
    script = load_setup_script(monkeypatch)
    old = tmp_path / "cmake"
    old.write_text("#!/bin/sh\necho 'cmake version 3.25.1'\n")
    old.chmod(0o755)
    with pytest.raises(SystemExit, match=r"needs CMake >= 3\.26, found 3\.25\.1 .*`pip install cmake ninja"):
        script.check_cmake(str(old))
    with pytest.raises(SystemExit, match=r"needs CMake >= 3\.26, found none"):
        script.check_cmake(str(tmp_path / "no-such-cmake"))
    old.write_text("#!/bin/sh\necho 'cmake version 4.1.0'\n")
    script.check_cmake(str(old))


def test_a_build_folder_of_a_moved_checkout_is_rebuilt(monkeypatch, tmp_path):
    # A checkout copied with its build/ folder: CMake refused the cache of the old path.
    script = load_setup_script(monkeypatch)
    build = tmp_path / "build"
    build.mkdir()
    (build / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={tmp_path / 'old'}\n")
    script.clear_moved_cache(build, tmp_path / "new")
    assert not build.exists()
    build.mkdir()
    (build / "CMakeCache.txt").write_text(f"CMAKE_HOME_DIRECTORY:INTERNAL={tmp_path / 'new'}\n")
    script.clear_moved_cache(build, tmp_path / "new")
    assert (build / "CMakeCache.txt").is_file()


def test_a_missing_core_says_how_to_build_it(monkeypatch):
    # An unbuilt checkout (or an install without its .so) gave a bare "cannot import name '_C'".
    import superthoughts_ext

    monkeypatch.delattr(superthoughts_ext, "_C")
    monkeypatch.setitem(sys.modules, "superthoughts_ext._C", None)
    with pytest.raises(ImportError, match=r"the compiled core, is not built here; build it with `pip install "
                                          r"--no-build-isolation -e \.` .*use_kernels=False"):
        superthoughts_ext.load_core()


"""Thin setup.py: CMakeLists.txt decides sources and flags; this only runs CMake.

CUDA is built when the installed torch has CUDA (torch.version.cuda), never because nvcc
exists; override with SUPERTHOUGHTS_WITH_CUDA=0/1. SUPERTHOUGHTS_CUDA_ARCHS overrides the
CUDA architectures (default "80;90a"). Install with `pip install --no-build-isolation .`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def package_version() -> str:
    text = (ROOT / "superthoughts_ext" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def want_cuda(torch_module) -> bool:
    override = os.environ.get("SUPERTHOUGHTS_WITH_CUDA")
    if override is not None:
        return override.strip().lower() in ("1", "on", "true", "yes")
    return torch_module.version.cuda is not None


def cmake_build_dir(torch_module, with_cuda: bool) -> Path:
    """A build folder in the checkout that outlives the pip call, one per Python, torch and CUDA choice.

    pip hands an editable build a fresh temporary build_temp each time, so every `make build`
    recompiled everything; this folder keeps CMake's objects between builds. Keying it on the
    Python and torch releases keeps one venv's CMake cache (headers, libraries, the CUDA
    compiler CMake fixes at its first configure) out of another's.
    """
    kind = "cuda" if with_cuda else "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch_module.__version__}-{kind}"
    return ROOT / "build" / "cmake" / re.sub(r"[^A-Za-z0-9.+_-]", "_", tag)


def cmake_executable() -> str:
    """The `cmake` PyPI package's binary when installed (a recent CMake), else the PATH's."""
    try:
        import cmake

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except (ImportError, AttributeError):
        return "cmake"


MIN_CMAKE = (3, 26)


def check_cmake(executable: str) -> None:
    """SystemExit naming the fix when `executable` is missing or older than MIN_CMAKE: with
    --no-build-isolation pip does not install pyproject's build requirements, so a system CMake
    (Debian 12's 3.25) was used and failed in cmake_minimum_required."""
    wanted = ".".join(map(str, MIN_CMAKE))
    try:
        text = subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    found = re.search(r"version ((\d+)\.(\d+)\S*)", text)
    if found is None or (int(found.group(2)), int(found.group(3))) < MIN_CMAKE:
        raise SystemExit(f"superthoughts_ext: the build needs CMake >= {wanted}, found "
                         f"{'none' if found is None else found.group(1)} ({executable}); install it into "
                         "this environment with `pip install cmake ninja` (a --no-build-isolation build does not "
                         "install pyproject's build requirements)")


def clear_moved_cache(build_dir: Path, root: Path) -> None:
    """Removes `build_dir` when CMake configured it for another source folder (a checkout copied
    or moved with its build/ folder): CMake refuses such a cache ("CMakeCache.txt directory ...
    is different") and the build stopped there."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return
    home = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(errors="replace"), re.MULTILINE)
    if home is not None and Path(home.group(1)).resolve() != root.resolve():
        print(f"superthoughts_ext: {build_dir} was configured for {home.group(1)}; rebuilding it from scratch")
        shutil.rmtree(build_dir)


def wheel_nvrtc(torch_dir: Path, cuda_home: str, cuda_version: str) -> Path | None:
    """The libnvrtc of the NVIDIA wheel beside a PyPI torch, when the CUDA toolkit has none.

    torch's CMake config lists libnvrtc among the CUDA libraries and stops the configure without
    it ("CUDA_nvrtc_LIBRARY ... NOTFOUND"), though this module never calls NVRTC (the linker
    drops it). Toolkits without it exist (conda's cuda-nvcc, a minimal runfile install), and a
    PyPI torch depends on a wheel that ships it: nvidia/cu13/lib for CUDA 13 builds,
    nvidia/cuda_nvrtc/lib for CUDA 12 ones; only one of torch's CUDA major version
    (``cuda_version``, e.g. "13.0") is taken, as a venv moved from cu12 to cu13 keeps both.
    """
    is_nvrtc = re.compile(r"libnvrtc\.so(\.[0-9]+)*")  # not libnvrtc-builtins or libnvrtc.alt
    for folder in ("lib64", "lib", "targets/*/lib"):
        if any(is_nvrtc.fullmatch(f.name) for f in Path(cuda_home).glob(f"{folder}/libnvrtc.so*")):
            return None
    of_major = re.compile(rf"libnvrtc\.so\.{re.escape(cuda_version.split('.')[0])}(\.[0-9]+)*")
    wheels = sorted(f for f in torch_dir.parent.glob("nvidia/*/lib/libnvrtc.so*") if of_major.fullmatch(f.name))
    return wheels[0] if wheels else None


def license_metadata() -> dict[str, str]:
    """The license in the form this setuptools knows.

    setuptools >= 77 reads an SPDX expression (PEP 639) and deprecates the free-text form
    (an error in its releases after 2027-02-18); older ones know only the free text. Builds
    run with --no-build-isolation, so the user's setuptools decides.
    """
    major = int(setuptools.__version__.split(".")[0])
    return {"license_expression": "Apache-2.0"} if major >= 77 else {"license": "Apache-2.0"}


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch
        import torch.utils

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        with_cuda = want_cuda(torch)
        if with_cuda and torch.version.cuda is None:
            raise SystemExit(f"superthoughts_ext: SUPERTHOUGHTS_WITH_CUDA asks for the CUDA kernels, but torch "
                             f"{torch.__version__} is a CPU-only build (no CUDA headers to compile against); "
                             "install a CUDA torch, or leave SUPERTHOUGHTS_WITH_CUDA unset")
        check_cmake(cmake_executable())
        build_dir = cmake_build_dir(torch, with_cuda)
        clear_moved_cache(build_dir, ROOT)
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            cmake_executable(), "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            # Set on every configure: a venv rebuilt with the same releases reuses the folder, and a
            # cached value would build against the old venv's torch.
            f"-DTorch_DIR={Path(torch.utils.cmake_prefix_path) / 'Torch'}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DSUPERTHOUGHTS_VERSION={package_version()}",
            f"-DSUPERTHOUGHTS_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("SUPERTHOUGHTS_CUDA_ARCHS"):
            configure.append(f"-DSUPERTHOUGHTS_CUDA_ARCHS={os.environ['SUPERTHOUGHTS_CUDA_ARCHS']}")
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        if with_cuda and Path(cuda_home, "bin", "nvcc").exists():
            # torch's CMake config looks the toolkit up through FindCUDA, which needs the root.
            configure.append(f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}")
            if not os.environ.get("CUDACXX"):
                configure.append(f"-DCMAKE_CUDA_COMPILER={Path(cuda_home, 'bin', 'nvcc')}")
            nvrtc = wheel_nvrtc(Path(torch.__file__).resolve().parent, cuda_home, torch.version.cuda)
            if nvrtc is not None:  # both names: torch caches the second from the first at its first configure
                configure += [f"-DCUDA_nvrtc_LIBRARY={nvrtc}", f"-DCUDA_NVRTC_LIB={nvrtc}"]
        elif with_cuda and not (os.environ.get("CUDACXX") or shutil.which("nvcc")):
            raise SystemExit(
                f"superthoughts_ext: the CUDA kernels are to be built (torch {torch.__version__}), "
                f"but there is no nvcc, neither under CUDA_HOME={cuda_home} nor on the PATH. Set "
                "CUDA_HOME to the CUDA toolkit, or SUPERTHOUGHTS_WITH_CUDA=0 for a CPU-only build.")
        # find_package(Torch) of a CUDA torch demands a complete CUDA toolkit even when nothing
        # here is CUDA; CMakeLists.txt takes torch's CPU libraries from this folder instead
        # (empty otherwise, explicitly, so that no earlier configure's value lingers).
        cpu_only = Path(torch.__file__).parent if not with_cuda and torch.version.cuda is not None else ""
        configure.append(f"-DSUPERTHOUGHTS_CPU_ONLY_TORCH_DIR={cpu_only}")
        try:
            import ninja  # noqa: F401

            configure += ["-G", "Ninja"]
        except ImportError:
            pass
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(configure, check=True)
        subprocess.run([cmake_executable(), "--build", str(build_dir), "--parallel", jobs], check=True)


setup(
    ext_modules=[Extension("superthoughts_ext._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    **license_metadata(),
)

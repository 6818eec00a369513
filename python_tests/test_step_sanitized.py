"""The CPU step kernel under AddressSanitizer and UBSan, with every vector ISA this CPU can run.

The main suite runs the kernel as built (-O3, unchecked): a read past a logits row, a vocab
chunk's tail or a merge tile, or undefined behaviour in the vector code (a signed overflow in
a lane that is discarded afterwards) changes no result there. Here csrc/torch_bindings.cpp and
csrc/cpu/step.cpp are compiled with -fsanitize=address,undefined into a copy of the package in
the temp folder, and the CPU step tests run against it in a subprocess that preloads libasan;
any report aborts the run. ThreadSanitizer is not used: torch's libgomp is not instrumented,
so TSan cannot see the fork and join of at::parallel_for's OpenMP region and would report
every phase as racing with the next.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

import superthoughts_ext
from test_step_cuda_memcheck import address_sanitizer_runtime
from test_step_isa import VARIANTS, VECTOR_TESTS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(superthoughts_ext.__file__).parent
SOURCES = [ROOT / "csrc" / "torch_bindings.cpp", ROOT / "csrc" / "cpu" / "step.cpp"]
HEADERS = sorted((ROOT / "csrc").glob("*.h")) + sorted((ROOT / "csrc" / "cpu").glob("*.h")) + [
    ROOT / "csrc" / "kernels" / name for name in ("confidence.h", "philox.h", "host_device.h")]
FLAGS = ["-O1", "-g", "-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-fopenmp"]
STEP_TESTS = [str(Path(__file__).with_name(name)) for name in ("test_step.py", "test_step_fuzz.py", "test_step_row_seeds.py")]


def build_sanitized_package(cxx: str) -> Path:
    """A folder holding superthoughts_ext with a sanitized _C (reused while the sources are unchanged)."""
    torch_lib = Path(torch.__file__).parent / "lib"
    defines = [f"-DSUPERTHOUGHTS_VERSION=\"{superthoughts_ext.__version__}\"",
               f"-DSUPERTHOUGHTS_TORCH_VERSION=\"{torch.__version__.split('+')[0]}\"",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    includes = [f"-I{p}" for p in [ROOT / "csrc", *torch.utils.cpp_extension.include_paths(),
                                   sysconfig.get_paths()["include"]]]
    key = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join([cxx, *FLAGS, *defines, *includes]).encode()
    folder = Path(tempfile.gettempdir()) / "superthoughts_cpu_sanitized" / hashlib.sha256(key).hexdigest()[:16]
    module = folder / "superthoughts_ext" / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not module.exists():
        work = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")  # renamed when complete
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        objects = [work / f"{source.stem}.o" for source in SOURCES]
        compiles = [subprocess.Popen([cxx, "-std=c++20", "-fPIC", *FLAGS, *defines, *includes, "-c", str(source),
                                      "-o", str(obj)], stderr=subprocess.PIPE, text=True)
                    for source, obj in zip(SOURCES, objects)]
        errors = [p.communicate()[1][-4000:] for p in compiles if p.wait() != 0]
        assert not errors, "compiling the sanitized CPU op failed:\n" + "\n".join(errors)
        (work / "superthoughts_ext").mkdir()
        link = [cxx, "-shared", *FLAGS, *map(str, objects), f"-L{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10",
                f"-Wl,-rpath,{torch_lib}", "-o", str(work / "superthoughts_ext" / module.name)]
        result = subprocess.run(link, capture_output=True, text=True)
        assert result.returncode == 0, f"linking the sanitized CPU op failed:\n{result.stderr[-4000:]}"
        try:
            work.replace(folder)
        except OSError:  # another run finished the same build first
            shutil.rmtree(work, ignore_errors=True)
    # The Python files as they are now, next to the sanitized module.
    shutil.copytree(PACKAGE, folder / "superthoughts_ext", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    return folder


@pytest.fixture(scope="module")
def sanitized_env():
    runtime = address_sanitizer_runtime()
    if runtime is None:
        pytest.skip("the C++ compiler has no AddressSanitizer runtime (libasan.so)")
    cxx = os.environ.get("CXX", "g++")
    folder = build_sanitized_package(cxx)
    libstdcxx = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        # ASan must come first (the sanitized _C is loaded later), and libstdc++ with it: ASan's
        # __cxa_throw interceptor binds at start-up, and the op's error tests throw c10::Error.
        "LD_PRELOAD": f"{runtime}:{libstdcxx}",
        "ASAN_OPTIONS": "detect_leaks=0",  # Python and torch keep allocations until exit by design
    }, folder


@pytest.mark.parametrize("isa", VARIANTS)
def test_cpu_step_kernel_under_address_sanitizer(sanitized_env, isa):
    env, folder = sanitized_env
    env = {**env, "SUPERTHOUGHTS_CPU_ISA": isa}
    probe = subprocess.run([sys.executable, "-c", "import superthoughts_ext as s; print(s.__file__, "
                            "s.build_info()['cpu_vector_isa'])"], env=env, cwd=folder, capture_output=True, text=True)
    if "is not a vector kernel variant this CPU can run" in probe.stderr:
        pytest.skip(f"this CPU cannot run {isa}")
    assert probe.returncode == 0, probe.stderr[-4000:]
    assert probe.stdout.split() == [str(folder / "superthoughts_ext" / "__init__.py"), isa], probe.stdout
    # Run from the copy's folder: the current one comes first on sys.path (the working tree's
    # unsanitized package in CI). The fastest variant runs every CPU step test (the main suite's default); the others, like
    # test_step_isa.py, the tests that reach the vector code, without the largest vocabulary.
    if isa == superthoughts_ext.build_info()["cpu_vector_isa"]:
        selection = "not emulated"
    else:
        selection = f"({VECTOR_TESTS}) and not V151936"
    # --capture=sys: a sanitizer writes its report to file descriptor 2, which stays the
    # subprocess's stderr instead of a capture file that an abort discards.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", *STEP_TESTS,
               "-k", selection]
    result = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=900)
    report = (result.stdout[-3000:] + result.stderr[-6000:])
    assert result.returncode == 0, f"CPU step kernel under AddressSanitizer/UBSan ({isa}) failed:\n{report}"
    assert " passed" in result.stdout and "runtime error" not in result.stderr, report

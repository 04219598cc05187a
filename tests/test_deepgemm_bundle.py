"""tools/deepgemm-build and the bundle's activate, on a stand-in DeepGEMM checkout whose extension is a
one-function Python module: the bundle is assembled from --src, built once by torch's extension builder
against this torch, put on PYTHONPATH and imported; a second activate reuses the build; every failure
names its cause. The real DeepGEMM build needs a CUDA toolkit and GCC 13 (the GPU host)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tools" / "deepgemm-build"


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("deepgemm-checkout")
    _write(
        src / "csrc" / "python_api.cpp",
        "#include <Python.h>\n"
        "static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }\n"
        'static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};\n'
        'static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};\n'
        "PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&module); }\n",
    )
    _write(src / "csrc" / "apis" / "gemm.hpp", "#pragma once\n")
    _write(src / "deep_gemm" / "__init__.py", "from . import _C\n\n__version__ = '9.9.9'\n")
    _write(src / "deep_gemm" / "_C.cpython-312-x86_64-linux-gnu.so", "a prebuilt library for another torch")
    _write(src / "deep_gemm" / "include" / "deep_gemm" / "impls" / "gemm.cuh", "#pragma once\n")
    _write(src / "third-party" / "cutlass" / "include" / "cute" / "tensor.hpp", "#pragma once\n")
    _write(src / "third-party" / "cutlass" / "include" / "cutlass" / "version.h", "#pragma once\n")
    _write(src / "third-party" / "DeepJIT" / "include" / "deep_jit" / "python_api.hpp", "#pragma once\n")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    return src


@pytest.fixture(scope="module")
def bundle(checkout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / ".deepgemm"
    r = subprocess.run(["bash", str(BUILD), "--src", str(checkout), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def _toolkit(tmp: Path) -> Path:
    """A stand-in CUDA toolkit: cuda.h, and the libcudart of torch's own CUDA wheels to link against."""
    import torch

    found = sorted(Path(torch.__file__).parent.parent.glob("nvidia/**/libcudart.so.*"))
    if not found:
        pytest.skip("this torch ships no libcudart (a CPU-only build)")
    cuda = tmp / "cuda"
    _write(cuda / "include" / "cuda.h", "#pragma once\n")
    (cuda / "lib64").mkdir(parents=True)
    (cuda / "lib64" / "libcudart.so").symlink_to(found[0])
    return cuda


def _compiler(tmp: Path, has_format: bool) -> Path:
    """The host compiler, wrapped: with a declaration-only <format> where the system's libstdc++ predates
    GCC 13 (the stand-in module uses none of it), or one that has no <format> at all."""
    shim = tmp / "shim"
    _write(shim / "format", "#pragma once\n#include <string>\n")
    cxx = tmp / ("cxx" if has_format else "cxx-old")
    body = (
        f'exec g++ -I{shim} "$@"' if has_format else 'echo "fatal error: format: No such file or directory" >&2; exit 1'
    )
    _write(cxx, f"#!/bin/sh\n{body}\n")
    cxx.chmod(0o755)
    return cxx


def _source(bundle: Path, tmp: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    full = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DEEPGEMM_HOME": str(tmp / "home"),
        "PYTHONPATH": "",
        **env,
    }
    return subprocess.run(
        ["bash", "-c", f"source {bundle}/activate; {script}"], capture_output=True, text=True, env=full
    )


def test_bundle_holds_the_sources_and_no_prebuilt_library(bundle, checkout):
    with tarfile.open(bundle / "deepgemm-src.tar.xz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    for want in (
        "csrc/python_api.cpp",
        "deep_gemm/__init__.py",
        "deep_gemm/include/deep_gemm/impls/gemm.cuh",
        "deep_gemm/include/cute/tensor.hpp",
        "deep_gemm/include/cutlass/version.h",
        "deep_jit/include/deep_jit/python_api.hpp",
        "sysinclude/elfutils/libdwfl.h",
    ):
        assert want in names
    assert not [n for n in names if "_C" in n and n.endswith(".so")]
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    source = (bundle / "SOURCE").read_text()
    assert "DeepGEMM 9.9.9" in source and commit.stdout.strip() in source
    assert {"activate", "compile.py", "SOURCE", "deepgemm-src.tar.xz"} <= {p.name for p in bundle.iterdir()}


def test_activate_builds_once_and_puts_deep_gemm_on_the_path(bundle, tmp_path):
    env = {"CUDA_HOME": str(_toolkit(tmp_path)), "CXX": str(_compiler(tmp_path, has_format=True))}
    check = 'python3 -c "import deep_gemm; print(deep_gemm._C.answer(), deep_gemm.__file__)"'
    first = _source(bundle, tmp_path, check, **env)
    assert first.returncode == 0, first.stderr
    answer, where = first.stdout.split()
    assert answer == "42" and Path(where).is_relative_to(tmp_path / "home")
    assert "[deepgemm] built" in first.stderr
    again = _source(bundle, tmp_path, check, **env)
    assert again.returncode == 0 and again.stdout.split()[0] == "42"
    assert "building" not in again.stderr  # the stamp matched: nothing rebuilt


def test_a_compiler_without_format_is_refused_by_name(bundle, tmp_path):
    cxx = _compiler(tmp_path, has_format=False)
    r = _source(bundle, tmp_path, 'echo "PYTHONPATH=$PYTHONPATH"', CUDA_HOME=str(_toolkit(tmp_path)), CXX=str(cxx))
    assert f"{cxx} cannot compile C++20 with <format>" in r.stderr and "GCC 13" in r.stderr
    assert "not activated" in r.stderr and "PYTHONPATH=\n" in r.stdout


def test_a_missing_bundle_is_named(bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(bundle / "compile.py", empty / "compile.py")
    r = subprocess.run(
        [sys.executable, str(empty / "compile.py"), "--bundle", str(empty), "--home", str(tmp_path / "h")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and f"{empty}: no deepgemm-src.tar.xz" in r.stderr


def test_build_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    r = subprocess.run(
        ["bash", str(BUILD), "--src", str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no csrc/python_api.cpp" in r.stderr

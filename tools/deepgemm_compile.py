"""Unpack a DeepGEMM source bundle and build its Python extension against this host's torch.

Run by the bundle's `activate` (tools/deepgemm-build writes both). The bundle holds DeepGEMM's Python
package with its kernel headers (deep_gemm/, include/ with CUTLASS and CuTe), its host C++ (csrc/) and
the DeepJIT headers it includes (deep_jit/include). The extension is one translation unit
(csrc/python_api.cpp), compiled once per (bundle, torch, Python, CUDA) into HOME/deep_gemm/_C.so; the
kernels themselves are JIT-compiled by nvcc at their first call, as DeepGEMM always does.

Prints the directory to put on PYTHONPATH as its last line; exit status 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SOURCE_TAR = "deepgemm-src.tar.xz"
STAMP = ".built"


class BuildError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cuda_home() -> Path:
    """CUDA_HOME, else the toolkit that holds the nvcc on PATH, else /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda.h").is_file():
            return Path(c)
    raise BuildError(
        "no CUDA toolkit found (looked for include/cuda.h under CUDA_HOME, CUDA_PATH, the nvcc on PATH "
        "and /usr/local/cuda): set CUDA_HOME"
    )


def cxx() -> str:
    """The host C++ compiler: CXX, else c++/g++ on PATH; it must have C++20 with <format> (GCC 13 or newer)."""
    name = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not name:
        raise BuildError("no C++ compiler: set CXX (GCC 13 or newer)")
    if not shutil.which(name):
        raise BuildError(f"CXX={name} is not an executable")
    # DeepJIT uses std::format, which libstdc++ has from GCC 13
    probe = subprocess.run(
        [name, "-std=c++20", "-x", "c++", "-fsyntax-only", "-"],
        input="#include <format>\n",
        text=True,
        capture_output=True,
    )
    if probe.returncode:
        raise BuildError(
            f"{name} cannot compile C++20 with <format> ({probe.stderr.strip()[:300]}): set CXX to GCC 13 or newer"
        )
    return name


def fingerprint(bundle: Path) -> dict:
    import torch

    return {
        "bundle_sha256": _sha256(bundle / SOURCE_TAR),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cxx11_abi": bool(torch.compiled_with_cxx11_abi()),
        "python": sys.version.split()[0],
        "executable": sys.executable,
    }


def _built(home: Path, want: dict) -> bool:
    stamp = home / STAMP
    if not stamp.is_file() or not (home / "deep_gemm" / "_C.so").is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == want
    except (OSError, ValueError):
        return False


def _unpack(bundle: Path, dest: Path) -> None:
    with tarfile.open(bundle / SOURCE_TAR) as tar:
        # the archive is ours, but never let a member escape the destination
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)
    for need in (
        "deep_gemm/__init__.py",
        "deep_gemm/include/deep_gemm",
        "deep_gemm/include/cute",
        "deep_gemm/include/cutlass",
        "csrc/python_api.cpp",
        "deep_jit/include/deep_jit",
        "sysinclude/elfutils/libdwfl.h",
    ):
        if not (dest / need).exists():
            raise BuildError(f"{bundle / SOURCE_TAR}: the bundle lacks {need}; rebuild it with tools/deepgemm-build")


def _compile(src: Path, jobs: int) -> Path:
    """Build csrc/python_api.cpp into src/deep_gemm/_C.so with torch's extension builder (ninja)."""
    cuda = cuda_home()
    os.environ["CUDA_HOME"] = str(cuda)
    os.environ["CXX"] = cxx()
    os.environ.setdefault("MAX_JOBS", str(jobs))
    # only .cpp is compiled, but torch's builder asks for an arch list whenever CUDA is on
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0;12.0")
    import torch
    import torch.utils.cpp_extension as ext

    ext.CUDA_HOME = str(cuda)
    include = [src / "csrc", src / "deep_gemm" / "include", src / "deep_jit" / "include", cuda / "include"]
    if (cuda / "include" / "cccl").is_dir():
        include.append(cuda / "include" / "cccl")
    libdirs = [d for d in (cuda / "lib64", cuda / "lib") if d.is_dir()]
    build = src / "build"
    build.mkdir(exist_ok=True)
    started = time.monotonic()
    print(
        f"[deepgemm] building the extension against torch {torch.__version__} with {os.environ['CXX']} "
        f"(CUDA {cuda}); one translation unit, about a minute or two",
        file=sys.stderr,
        flush=True,
    )
    try:
        ext.load(
            name="_C",
            sources=[str(src / "csrc" / "python_api.cpp")],
            extra_cflags=[
                "-std=c++20",  # DeepJIT's std::format; torch's builder would otherwise add its own -std=c++17
                "-O2",
                "-Wno-psabi",
                "-Wno-deprecated-declarations",
                "-idirafter",
                str(src / "sysinclude"),
                f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
            ],
            extra_include_paths=[str(p) for p in include],
            # found at import whether or not torch was imported first
            extra_ldflags=[
                *(f"-L{d}" for d in libdirs),
                "-lcudart",
                *(f"-Wl,-rpath,{d}" for d in (*libdirs, Path(torch.__file__).parent / "lib")),
            ],
            build_directory=str(build),
            with_cuda=True,
            is_python_module=False,
            verbose=True,
        )
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""  # the loader's own message, e.g. a missing symbol
        raise BuildError(f"building {src / 'csrc' / 'python_api.cpp'} failed: {exc}{cause}") from exc
    out = src / "deep_gemm" / "_C.so"
    shutil.copy2(build / "_C.so", out)
    print(f"[deepgemm] built {out} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def _check_import(src: Path) -> None:
    """`import deep_gemm` from the fresh build, in a clean process, before it replaces a working one."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", "import deep_gemm"], cwd="/", env=env, capture_output=True, text=True)
    if r.returncode:
        tail = "\n".join(r.stderr.strip().splitlines()[-8:])
        raise BuildError(f"the built deep_gemm does not import:\n{tail}")


def ensure_built(bundle: Path, home: Path, jobs: int) -> Path:
    """HOME with deep_gemm/ built for this host, unpacking and compiling only when the fingerprint moved."""
    if not (bundle / SOURCE_TAR).is_file():
        raise BuildError(f"{bundle}: no {SOURCE_TAR}; run tools/deepgemm-build first")
    want = fingerprint(bundle)
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{home}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two shells sourcing activate at once build once
        if _built(home, want):
            return home
        staging = home.with_name(home.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _unpack(bundle, staging)
        _compile(staging, jobs)
        _check_import(staging)
        (staging / STAMP).write_text(json.dumps({"fingerprint": want}, indent=1))
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the folder tools/deepgemm-build wrote")
    parser.add_argument("--home", type=Path, required=True, help="where deep_gemm/ is unpacked and built")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    # the compiler's output goes to stderr, so that stdout carries the one line the caller reads
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        home = ensure_built(args.bundle.resolve(), args.home.resolve(), args.jobs)
    except BuildError as exc:
        print(f"[deepgemm] error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"[deepgemm] error: torch is not importable by {sys.executable} ({exc})", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())

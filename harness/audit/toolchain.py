"""The audit's toolchain: the CUDA compiler of the `audit` extra, the binaries Triton's wheel ships
(cuobjdump), the cache of builds, and the child processes the compilers and replays run in."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HARNESS_ROOT = Path(__file__).resolve().parents[2]  # what the audit's child processes import harness from


def toolkit_root() -> Path | None:
    """The CUDA compiler of the `audit` extra (PyPI's nvidia-cuda-nvcc), where it is installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cu13")
    except ModuleNotFoundError:
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "bin" / "nvcc").exists():
            return Path(root)
    return None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sm120-harness" / "cuda-audit"


def triton_tool(name: str) -> str | None:
    import triton  # the wheel's folder; imported here, not at the top, so readers of findings need no Triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else None


def with_toolkit(env: dict[str, str]) -> dict[str, str]:
    """`env` with CUDA_HOME naming the audit extra's toolkit, unless it names a toolkit already:
    SGLang's JIT and TileLang then find that nvcc."""
    toolkit = toolkit_root()
    if "CUDA_HOME" in env or "CUDA_PATH" in env or toolkit is None:
        return env
    return {**env, "CUDA_HOME": str(toolkit)}


def child_env() -> dict[str, str]:
    """The environment of the audit's compiler and replay processes: the harness importable, kernels
    compiled (not interpreted), the audit's toolkit."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(HARNESS_ROOT), os.environ.get("PYTHONPATH", "")])
    return with_toolkit(env)


def run_child(module: str, args: list[str], what: str, timeout_s: float) -> str | None:
    """`python -m module args` in the audit's child environment; None, or why it ended early (its
    findings so far are in the files it writes as it goes)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], env=child_env(), capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"{what} timed out"
    return None if proc.returncode == 0 else f"{what} exited with {proc.returncode}: {proc.stderr[-1500:]}"

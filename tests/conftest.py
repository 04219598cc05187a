from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPS = Path(__file__).resolve().parent / "ops"
# the tests never touch the runner's caches; each CLI call gets caches of its own (a test that changes
# an op's inputs without changing its code must not be handed the inputs of another test)
_CACHES = tempfile.TemporaryDirectory(prefix="sm120-harness-test-caches-")
os.environ.setdefault("SM120_HARNESS_CACHE", os.path.join(_CACHES.name, "shared"))


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Tests that draw from torch's global generator draw the same numbers on every run and worker:
    a check that holds only for some draws must fail here, not once in a while in CI."""
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


def sglang_available() -> bool:
    from harness.workers.sglang_src import sglang_root

    try:
        return sglang_root() is not None
    except Exception:
        return False


def needs_sglang():
    """CI installs SGLang's sources, so there a missing SGLang is an error, not a skip."""
    if sglang_available():
        return
    if os.environ.get("CI"):
        pytest.fail("sglang is not installed; CI must install it (see README)")
    pytest.skip("sglang is not installed (pip install --no-deps sglang==0.5.23)")


def run_cli(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: float = 600):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "SM120_HARNESS_CACHE": tempfile.mkdtemp(dir=_CACHES.name), **(env or {})},
        timeout=timeout,
    )


def write_profile(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def run_op(tmp: Path, profile: str, op: str, timeout: float = 600):
    """Run the op `op` of tests/ops through the real CLI under `profile` (TOML text): the completed
    process and the run it stored."""
    from harness.results.store import load_run

    prof = write_profile(tmp / "p.toml", profile)
    store = tmp / "runs"
    r = run_cli(
        ["run", "--suite", str(prof), "--store", str(store), "--kernels-dir", str(OPS), "--only", op], timeout=timeout
    )
    return r, load_run(next(store.iterdir()))

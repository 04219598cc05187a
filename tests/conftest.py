from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.run import Outcome

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


def _fresh_cache() -> str:
    return tempfile.mkdtemp(dir=_CACHES.name)


@dataclass
class CliResult:
    """What `cli` gives back, named as subprocess.CompletedProcess names it."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class LeakWarning(UserWarning):
    """The harness left this process changed after a command (`in_process` put it back)."""


_OP_MODULES = "_sm120_harness_op_"  # harness/parity/catalogue.py's private names of op files loaded by path


@contextlib.contextmanager
def in_process(what: str, env: dict | None = None, cwd: Path | None = None) -> Iterator[None]:
    """The harness called in this process as a new process would run it: `env` over this process's
    environment with caches of its own, in `cwd` where given. What the call leaves behind is put back,
    with a LeakWarning naming it: the environment, the working directory, sys.argv, the SIGINT and
    SIGTERM handlers; and the op files it loaded are forgotten (an op file edited between two calls is
    read again, as a new process would)."""
    from harness.parity.inputs import code_key
    from harness.workers.environment import scoped_environ

    environ, argv, here = dict(os.environ), sys.argv, os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    modules = set(sys.modules)
    try:
        with scoped_environ({"SM120_HARNESS_CACHE": _fresh_cache(), **(env or {})}):
            if cwd is not None:
                os.chdir(cwd)
            yield
    finally:
        os.chdir(here)
        sys.argv = argv
        leaked = sorted(k for k in os.environ.keys() | environ.keys() if os.environ.get(k) != environ.get(k))
        if leaked:
            os.environ.clear()
            os.environ.update(environ)
            warnings.warn(f"{what} left os.environ changed: {leaked}", LeakWarning, stacklevel=3)
        for s, h in handlers.items():
            if signal.getsignal(s) is not h:
                signal.signal(s, h)
                warnings.warn(f"{what} left the {s.name} handler changed", LeakWarning, stacklevel=3)
        for name in set(sys.modules) - modules:
            if name.startswith(_OP_MODULES):
                del sys.modules[name]
        code_key.cache_clear()


def cli(args: list[str], cwd: Path | None = ROOT, env: dict | None = None) -> CliResult:
    """`sm120-harness ARGS` run in this process (harness.cli.main), as `python -m harness ARGS` would run
    in a subprocess: stdout and stderr captured, `env` and `cwd` applied and everything put back after
    (`in_process`). A test where a process is what is tested (a signal, a kill, a clean interpreter, the
    installed script) starts one itself."""
    from harness.cli import main

    args = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with in_process(f"sm120-harness {' '.join(args[:1])}", env, cwd):
        sys.argv = ["sm120-harness", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse: a usage error (2) or --help (0)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(args, code, out.getvalue(), err.getvalue())


def engine(env: dict | None = None, **request: Any) -> tuple[Outcome, str]:
    """harness.run.execute(Request(**request)) in this process, as `cli` runs a command (`in_process`):
    the outcome and what the engine said (what the command line prints on stderr)."""
    from harness.run import Request, execute

    said: list[str] = []
    with in_process("execute", env):
        outcome = execute(Request(say=said.append, **request))
    return outcome, "\n".join(said)


def write_profile(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def run_op(tmp: Path, profile: str, op: str):
    """Run the op `op` of tests/ops through the CLI (in this process) under `profile` (TOML text): what
    the command gave back and the run it stored."""
    from harness.results.store import load_run

    prof = write_profile(tmp / "p.toml", profile)
    store = tmp / "runs"
    r = cli(["run", "--suite", str(prof), "--store", str(store), "--kernels-dir", str(OPS), "--only", op])
    return r, load_run(next(store.iterdir()))


def run_planted(tmp: Path, profile: str, op: str):
    """Run the planted op `op` of tests/ops (run_op) and judge it by its op file's own ceilings: what the
    command gave back, the run it stored, and the rows past those ceilings."""
    from harness.parity.catalogue import load_op_file
    from harness.results.ceilings import breaches

    r, run = run_op(tmp, profile, op)
    return r, run, breaches(run.measurements, {op: load_op_file(OPS / f"{op}.py").ceilings})

"""A run stopped by ^C (or SIGTERM) keeps what it measured, marked `interrupted`; one killed outright
leaves a journal that still reads."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.results.store import load_run
from tests.conftest import OPS, ROOT, write_profile

PROFILE = """
name = "slow"
[kernels]
cases = ["tiny"]
[kernels.ops.toy_scale]
impls = ["good", "slow"]
goldens = ["fp64"]
"""


def _start(tmp_path):
    prof = write_profile(tmp_path / "p.toml", PROFILE)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--suite",
            str(prof),
            "--store",
            str(tmp_path / "runs"),
            "--kernels-dir",
            str(OPS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOY_SLOW_S": "30"},
        # as from a terminal: a test runner started in the background (a shell's `&`) ignores SIGINT,
        # and a child inherits that; Python then never installs its ^C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_good(tmp_path, timeout=120):
    """Until the oracle and `good` have all three outcomes (so `slow` is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for journal in (tmp_path / "runs").glob("*/measurements.jsonl"):
            rows = [json.loads(line) for line in open(journal) if line.endswith("\n")]
            done = [r for r in rows if r["metric"] == "outcome" and r["impl"] == "good"]
            if len(done) == 3:
                return journal.parent
        time.sleep(0.2)
    raise AssertionError("the run never got going")


def _workers_of(pid: int) -> list[int]:
    """Worker processes started by harness process `pid` (its pid is in their job file's name), also
    once they have been re-parented; and its fork server with the workers forked from it (they show
    the server's arguments, which end with the harness's pid)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        int(line.split()[0])
        for line in out.splitlines()[1:]
        if ("harness.parity.child" in line and f"-{pid}-" in line)
        or ("harness.workers.forkserver" in line and line.split()[-1] == str(pid))
    ]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_signal_keeps_what_was_measured(tmp_path, sig, code):
    proc = _start(tmp_path)
    run_dir = _wait_for_good(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)  # its page and parquet are written first; CI's two cores are shared
    assert proc.returncode == code, err
    run = load_run(run_dir)
    assert run.status == "interrupted"
    assert (run_dir / "measurements.parquet").exists()
    good = run.measurements[(run.measurements["impl"] == "good") & (run.measurements["metric"] == "outcome")]
    assert list(good["status"]) == ["ok"] * 3
    assert "interrupted" in err


def test_kill_leaves_a_readable_journal_and_no_worker(tmp_path):
    proc = _start(tmp_path)
    run_dir = _wait_for_good(tmp_path)
    deadline = time.monotonic() + 60
    while not _workers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers_of(proc.pid), "the slow worker should be running"
    proc.kill()
    proc.wait(timeout=30)
    run = load_run(run_dir)
    assert run.status == "interrupted"
    assert len(run.measurements[run.measurements["impl"] == "good"]) >= 3
    deadline = time.monotonic() + 10  # workers notice their parent is gone within a second or two
    while time.monotonic() < deadline and _workers_of(proc.pid):
        time.sleep(0.2)
    assert _workers_of(proc.pid) == []

"""Isolated workers: each path of an op runs its cases in a subprocess of its own, so a segfault, an
illegal memory access, a hang or an OOM is that path's `crashed`/`timeout`/`failed` and the run goes on.

Parent and child talk over the child's stdout, one JSON object per line; anything the kernels print
goes to the worker log (the child's stderr). A worker that dies or times out is replaced by a new one
for the cases it had not reached yet. The child side is harness/parity/child.py:

    python -m harness.parity.child JOB.json
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.workers.forkserver import ForkServer

STARTUP_S = 300.0  # importing torch, triton, SGLang and creating a CUDA context, before any case
CHILD = "harness.parity.child"  # the module a worker runs (python -m), or a forked worker calls
ACTIVE: set[subprocess.Popen] = set()  # live workers, killed by kill_all() on an interrupt


def kill_all() -> None:
    for proc in list(ACTIVE):
        _kill(proc)


@dataclass
class Job:
    op_file: str
    path: str
    cases: list[str]
    seed: int
    device: str  # "cuda" or "cpu"
    outdir: str
    timing: dict | None = None  # {"repeats", "warmup", "cuda_graph"}: time each case on a CUDA device
    inputs_dir: str | None = None  # the input cache (harness/cache.py); None: beside the outputs
    threads: int | None = None  # torch's intra-op threads, where several workers share the CPU
    modules_file: str | None = None  # where to list the modules it imported, for the fork server


@dataclass
class Result:
    case: str
    status: str  # ok | failed | crashed | timeout | skipped(reason)
    seconds: float = float("nan")
    digest: str | None = None
    detail: dict = field(default_factory=dict)


def worker_env(path, capability: tuple[int, int] | None, slot: str | None, **extra: str) -> dict[str, str]:
    """A worker's environment: the path's own knobs (SGLang reads some at import), Triton's interpreter
    where there is no GPU, the GPU of its slot."""
    env = {**os.environ, **(path.env if path is not None else {}), **extra}
    if capability is None:
        env["TRITON_INTERPRET"] = "1"
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    return env


def output_file(outdir: Path | str, case: str, path: str) -> Path:
    return Path(outdir) / case / f"{path}.safetensors"


def _tail(file: Path, lines: int = 25) -> str:
    try:
        text = file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_path(
    job: Job,
    *,
    timeout_s: float,
    log: Path,
    env: dict[str, str],
    cancelled: threading.Event,
    forks: ForkServer | None = None,
) -> Iterator[Result]:
    """Run every case of `job` in worker subprocesses (forked from `forks` where it can); yield one
    Result per case, in order. The first result of each worker carries its start-up seconds. Once the run
    is `cancelled`, no worker is started for what a killed one left."""
    pending = list(job.cases)
    while pending and not cancelled.is_set():
        sub = Job(**{**job.__dict__, "cases": pending})
        done = yield from _one_worker(sub, timeout_s=timeout_s, log=log, env=env, forks=forks)
        pending = pending[done:]


def _start(job_file: Path, env: dict[str, str], logf, forks: ForkServer | None):
    if forks is not None and forks.usable(env):
        proc = forks.fork(CHILD, str(job_file), env, logf.fileno())
        if proc is not None:
            return proc, "forked"
    proc = subprocess.Popen(
        [sys.executable, "-m", CHILD, str(job_file)],
        stdout=subprocess.PIPE,
        stderr=logf,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: killed whole, untouched by the terminal's ^C
    )
    return proc, "spawned"


def _one_worker(job: Job, *, timeout_s: float, log: Path, env: dict[str, str], forks: ForkServer | None):
    """Start one worker; yield its results; return how many cases it settled (at least one)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stem = f"{job.path}-{os.getpid()}-{time.monotonic_ns()}"
    job_file = Path(job.outdir) / f".job-{stem}.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    if forks is not None:
        job.modules_file = str(job_file.with_name(f".modules-{stem}.json"))
    job_file.write_text(json.dumps(job.__dict__))
    t_start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as logf:
        logf.write(f"\n=== worker {job.path}: {len(job.cases)} case(s) from {job.cases[0]} ===\n")
        logf.flush()
        proc, how = _start(job_file, env, logf, forks)
    ACTIVE.add(proc)
    startup = {"started": how}
    events: queue.Queue = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:
            try:
                events.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        events.put(None)

    threading.Thread(target=reader, daemon=True).start()
    settled = 0
    current = job.cases[0]
    started = False  # imports and CUDA initialisation get their own, longer allowance
    importing = None  # the SGLang module the worker is importing, if it is
    try:
        while settled < len(job.cases):
            wait = timeout_s if started else max(timeout_s, STARTUP_S)
            try:
                ev = events.get(timeout=wait)
            except queue.Empty:
                _kill(proc)
                what = f"no answer within {wait:g} s" if started else f"the worker did not start within {wait:g} s"
                detail = {"error": what, "log_tail": _tail(log), **({"importing": importing} if importing else {})}
                yield Result(current, "timeout", detail={**detail, "wall": startup} if not settled else detail)
                return settled + 1
            if ev is None:
                rc = proc.wait()
                if rc == 0 and settled:  # it stepped down on purpose (a poisoned CUDA context)
                    return settled
                if how == "forked" and not started:
                    # a forked worker that cannot even start (a CUDA context the fork cannot give it):
                    # no more forks for this run; its cases go to a fresh interpreter
                    forks.stop(f"a forked worker of {job.path} died before it started ({rc})")
                    return 0
                why = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with code {rc}"
                if importing:
                    why += f" while importing {importing}"
                detail = {
                    "error": f"worker {why}",
                    "log_tail": _tail(log),
                    **({"importing": importing} if importing else {}),
                }
                yield Result(current, "crashed", detail={**detail, "wall": startup} if not settled else detail)
                return settled + 1
            if ev.get("event") == "ready":
                started = True
                startup["startup_s"] = time.perf_counter() - t_start
                continue
            if ev.get("event") == "importing":
                importing = ev.get("module")
                continue
            if ev.get("event") == "modules":
                if forks is not None:
                    forks.learn(ev["file"])
                continue
            if ev.get("event") == "start":
                current = ev["case"]
                continue
            if ev.get("event") != "result":
                continue
            if ev.get("status") in ("failed",):
                ev.setdefault("detail", {})["log_tail"] = _tail(log)
            if settled == 0:
                wall = ev.setdefault("detail", {}).setdefault("wall", {})
                wall.update(startup)
            yield Result(
                ev["case"], ev["status"], ev.get("seconds", float("nan")), ev.get("digest"), ev.get("detail", {})
            )
            settled += 1
            if settled < len(job.cases):
                current = job.cases[settled]
        return settled
    finally:
        # normally the worker has settled every case and is exiting; if we leave early (an
        # interrupt), it is killed at once
        if proc.poll() is None and settled < len(job.cases):
            _kill(proc)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill(proc)
        ACTIVE.discard(proc)
        job_file.unlink(missing_ok=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---------------------------------------------------------------------------------------------
# the child side

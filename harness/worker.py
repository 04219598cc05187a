"""Isolated workers: each path of an op runs its cases in a subprocess of its own, so a segfault, an
illegal memory access, a hang or an OOM is that path's `crashed`/`timeout`/`failed` and the run goes on.

Parent and child talk over the child's stdout, one JSON object per line; anything the kernels print
goes to the worker log (the child's stderr). A worker that dies or times out is replaced by a new one
for the cases it had not reached yet.

    python -m harness.worker JOB.json
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
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_S = 300.0  # importing torch, triton, SGLang and creating a CUDA context, before any case
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
    env = {**os.environ, **path.env, **extra}
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


def run_path(job: Job, *, timeout_s: float, log: Path, env: dict[str, str]) -> Iterator[Result]:
    """Run every case of `job` in worker subprocesses; yield one Result per case, in order."""
    pending = list(job.cases)
    while pending:
        sub = Job(**{**job.__dict__, "cases": pending})
        done = yield from _one_worker(sub, timeout_s=timeout_s, log=log, env=env)
        pending = pending[done:]


def _one_worker(job: Job, *, timeout_s: float, log: Path, env: dict[str, str]):
    """Start one worker; yield its results; return how many cases it settled (at least one)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    job_file = Path(job.outdir) / f".job-{job.path}-{os.getpid()}-{time.monotonic_ns()}.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job.__dict__))
    with open(log, "a", encoding="utf-8") as logf:
        logf.write(f"\n=== worker {job.path}: {len(job.cases)} case(s) from {job.cases[0]} ===\n")
        logf.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.worker", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: killed whole, untouched by the terminal's ^C
        )
    ACTIVE.add(proc)
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
    try:
        while settled < len(job.cases):
            wait = timeout_s if started else max(timeout_s, STARTUP_S)
            try:
                ev = events.get(timeout=wait)
            except queue.Empty:
                _kill(proc)
                what = f"no answer within {wait:g} s" if started else f"the worker did not start within {wait:g} s"
                yield Result(current, "timeout", detail={"error": what, "log_tail": _tail(log)})
                return settled + 1
            if ev is None:
                rc = proc.wait()
                if rc == 0 and settled:  # it stepped down on purpose (a poisoned CUDA context)
                    return settled
                why = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with code {rc}"
                yield Result(current, "crashed", detail={"error": f"worker {why}", "log_tail": _tail(log)})
                return settled + 1
            if ev.get("event") == "ready":
                started = True
                continue
            if ev.get("event") == "start":
                current = ev["case"]
                continue
            if ev.get("event") != "result":
                continue
            if ev.get("status") in ("failed",):
                ev.setdefault("detail", {})["log_tail"] = _tail(log)
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


def _watch_parent() -> None:
    """Exit when the parent is gone (a killed harness must not leave workers holding a GPU)."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _time(path, inputs, case, timing: dict) -> dict:
    from harness.roofline import time_cuda

    try:
        fn = path.timed(inputs, case) if path.timed else (lambda: path.run(inputs, case))
        t = time_cuda(fn, repeats=timing["repeats"], warmup=timing["warmup"], cuda_graph=timing["cuda_graph"])
        return {"timing": {"samples_us": t.samples_us, "mode": t.mode}}
    except Exception as exc:  # the drift is measured already; a timing that fails is said, not fatal
        traceback.print_exc()
        return {"timing_error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]}


def child(job_file: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the kernels print lands in the log, not in the protocol

    def emit(**ev) -> None:
        proto.write(json.dumps(ev, default=str) + "\n")
        proto.flush()

    threading.Thread(target=_watch_parent, daemon=True).start()
    job = Job(**json.loads(Path(job_file).read_text()))

    import torch
    from safetensors.torch import save_file

    from harness import jit_capture, tilelang_capture, triton_capture
    from harness.catalogue import load_op_file
    from harness.inputs import cached_inputs, digest, to_device
    from harness.op import ORACLE, Unavailable
    from harness.sglang_src import SGL_KERNEL_CALLS

    triton_capture.install_from_env()
    jit_capture.install_from_env()
    tilelang_capture.install_from_env()
    op = load_op_file(Path(job.op_file))
    path = op.paths[job.path]
    cases = op.cases()
    if job.device == "cuda":
        torch.empty(1, device="cuda")  # create the context now: its seconds are not a case's
    emit(event="ready")
    for name in job.cases:
        emit(event="start", case=name)
        SGL_KERNEL_CALLS.clear()
        t0 = time.perf_counter()
        try:
            inputs = cached_inputs(op.module, op.name, cases[name], job.seed, Path(job.outdir))
            dig = digest(inputs)
            dev_inputs = to_device(inputs, job.device)
            outputs = path.run(dev_inputs, cases[name])
            _sync(job.device)
            seconds = time.perf_counter() - t0
            out = {k: v.detach().cpu().clone() for k, v in outputs.items()}  # clone: no shared storage
            target = output_file(job.outdir, name, job.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            save_file(out, str(tmp))
            os.replace(tmp, target)
            detail = {}
            if job.timing and job.device == "cuda" and path.name != ORACLE:  # the oracle is not a kernel
                detail = _time(path, dev_inputs, cases[name], job.timing)
            if SGL_KERNEL_CALLS:  # SGLang caught the stand-in's error and went on: say so beside the figure
                detail["sgl_kernel_absent_calls"] = sorted(set(SGL_KERNEL_CALLS))
            emit(event="result", case=name, status="ok", seconds=seconds, digest=dig, detail=detail)
        except Unavailable as exc:
            emit(event="result", case=name, status=f"skipped({exc})", seconds=time.perf_counter() - t0)
        except Exception as exc:  # a failing kernel is a measurement, not the end of the run
            traceback.print_exc()
            emit(
                event="result",
                case=name,
                status="failed",
                seconds=time.perf_counter() - t0,
                detail={"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]},
            )
            if job.device == "cuda" and "CUDA" in str(exc):
                # a sticky CUDA error poisons the context: let a fresh worker take the next case
                return 0
        finally:
            if job.device == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1]))

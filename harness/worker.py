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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.forkserver import ForkServer

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
    job: Job, *, timeout_s: float, log: Path, env: dict[str, str], forks: ForkServer | None = None
) -> Iterator[Result]:
    """Run every case of `job` in worker subprocesses (forked from `forks` where it can); yield one
    Result per case, in order. The first result of each worker carries its start-up seconds."""
    pending = list(job.cases)
    while pending:
        sub = Job(**{**job.__dict__, "cases": pending})
        done = yield from _one_worker(sub, timeout_s=timeout_s, log=log, env=env, forks=forks)
        pending = pending[done:]


def _start(job_file: Path, env: dict[str, str], logf, forks: ForkServer | None):
    if forks is not None and forks.usable(env):
        proc = forks.fork(str(job_file), env, logf.fileno())
        if proc is not None:
            return proc, "forked"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.worker", str(job_file)],
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


def _time(path, inputs, case, timing: dict, device: str) -> dict:
    from harness.roofline import time_cpu, time_cuda

    try:
        fn = path.timed(inputs, case) if path.timed else (lambda: path.run(inputs, case))
        if device == "cuda":
            t = time_cuda(fn, repeats=timing["repeats"], warmup=timing["warmup"], cuda_graph=timing["cuda_graph"])
        else:
            t = time_cpu(fn, repeats=timing["repeats"], warmup=timing["warmup"])
        return {"timing": {"samples_us": t.samples_us, "mode": t.mode}}
    except Exception as exc:  # the drift is measured already; a timing that fails is said, not fatal
        traceback.print_exc()
        return {"timing_error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]}


def _where(exc: BaseException) -> str:
    """The frame that raised `exc` (a bare `KeyError: 'sglang'` says nothing of where it came from)."""
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{tb[-1].filename}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""


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

    from harness import jit_capture, sglang_src, tilelang_capture, triton_capture
    from harness.catalogue import load_op_file
    from harness.environment import missing_module
    from harness.inputs import load_or_build, to_device
    from harness.op import ORACLE, Unavailable
    from harness.sglang_src import SGL_KERNEL_CALLS

    sglang_src.on_import = lambda what: emit(event="importing", module=what)
    triton_capture.install_from_env()
    jit_capture.install_from_env()
    tilelang_capture.install_from_env()
    if job.threads:
        torch.set_num_threads(job.threads)
    op = load_op_file(Path(job.op_file))
    path = op.paths[job.path]
    cases = op.cases()
    if job.device == "cuda":
        torch.empty(1, device="cuda")  # create the context now: its seconds are not a case's
    emit(event="ready")
    imported = set(sys.modules)
    inputs_dir = Path(job.inputs_dir or job.outdir)
    for i, name in enumerate(job.cases):
        emit(event="start", case=name)
        SGL_KERNEL_CALLS.clear()
        t0 = time.perf_counter()
        wall: dict = {}
        try:
            inputs, dig, hit = load_or_build(op.module, op.name, cases[name], job.seed, inputs_dir)
            dev_inputs = to_device(inputs, job.device)
            _sync(job.device)
            t1 = time.perf_counter()
            wall.update(inputs_s=t1 - t0, input_cache="hit" if hit else "built")
            outputs = path.run(dev_inputs, cases[name])
            _sync(job.device)
            t2 = time.perf_counter()
            seconds = t2 - t0
            wall["call_s"] = t2 - t1
            out = {k: v.detach().cpu().clone() for k, v in outputs.items()}  # clone: no shared storage
            target = output_file(job.outdir, name, job.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            save_file(out, str(tmp))
            os.replace(tmp, target)
            del outputs, out
            # a second call, to tell the first call's JIT, autotuning and lazy imports from the call
            # itself; on the CPU nothing is compiled, so only a worker's first case (its imports) is;
            # the oracle is plain PyTorch
            # (not under the audit's capture: it would record every launch twice)
            if path.name != ORACLE and (job.device == "cuda" or i == 0) and not os.environ.get(triton_capture.ENV):
                wall.update(_steady(path, dev_inputs, cases[name], job.device))
            detail = {}
            timed_here = job.device == "cuda" or job.timing and job.timing.get("on_cpu")
            if job.timing and timed_here and path.name != ORACLE:  # the oracle is not a kernel
                t3 = time.perf_counter()
                detail = _time(path, dev_inputs, cases[name], job.timing, job.device)
                wall["timing_s"] = time.perf_counter() - t3
            detail["wall"] = wall
            if SGL_KERNEL_CALLS:  # SGLang caught the stand-in's error and went on: say so beside the figure
                detail["sgl_kernel_absent_calls"] = sorted(set(SGL_KERNEL_CALLS))
            emit(event="result", case=name, status="ok", seconds=seconds, digest=dig, detail=detail)
        except Unavailable as exc:
            emit(event="result", case=name, status=f"skipped({exc})", seconds=time.perf_counter() - t0)
        except Exception as exc:  # a failing kernel is a measurement, not the end of the run
            traceback.print_exc()
            missing = missing_module(exc)
            if missing:  # the host lacks a package of the path's import chain: not the path's fault
                emit(event="result", case=name, status=f"skipped({missing})", seconds=time.perf_counter() - t0)
                continue
            emit(
                event="result",
                case=name,
                status="failed",
                seconds=time.perf_counter() - t0,
                detail={
                    "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000],
                    "raised_at": _where(exc),
                    "wall": wall,
                },
            )
            if job.device == "cuda" and "CUDA" in str(exc):
                # a sticky CUDA error poisons the context: let a fresh worker take the next case
                return 0
        finally:
            if job.device == "cuda":
                torch.cuda.empty_cache()
        if i == 0 and job.modules_file:
            _report_modules(job.modules_file, imported, emit)
    return 0


def _steady(path, inputs, case, device: str) -> dict:
    """The second call's seconds, and the first call's excess over it (JIT, autotuning, imports)."""
    try:
        t0 = time.perf_counter()
        path.run(inputs, case)
        _sync(device)
        return {"steady_call_s": time.perf_counter() - t0}
    except Exception as exc:  # the result is measured already; say why the split is missing
        return {"steady_error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}


def _report_modules(file: str, before: set[str], emit) -> None:
    from harness.forkserver import learnable

    names = sorted(m for m in set(sys.modules) - before if learnable(m))
    try:
        Path(file).write_text(json.dumps(names))
    except OSError:
        return
    emit(event="modules", file=file)


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1]))

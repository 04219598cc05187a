"""A worker, the child side of harness/workers/worker.py: load the op file, build (or load) each case's
inputs, run the path, write its outputs, time it where asked, and report each case on stdout as one JSON
object a line. Anything the kernels print goes to the worker log (stderr).

    python -m harness.parity.child JOB.json
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.parity.catalogue import load_op_file
from harness.parity.inputs import load_or_build, to_device
from harness.parity.roofline import time_cpu, time_cuda
from harness.results.metrics import ORACLE
from harness.workers import jit_capture, line_coverage, sglang_src, tilelang_capture, triton_capture
from harness.workers.environment import Absent, Unavailable, absent_from, environment_conflict, missing_module
from harness.workers.forkserver import learnable
from harness.workers.sglang_src import SGL_KERNEL_CALLS
from harness.workers.worker import Job, output_file


def _watch_parent() -> None:
    """Exit when the parent is gone (a killed harness must not leave workers holding a GPU)."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(path, inputs, case, timing: dict, device: str) -> dict:
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
    cov = line_coverage.start()  # only where SM120_HARNESS_LINE_COVERAGE asks (`coverage --lines`)
    try:
        return _child(job_file)
    finally:
        line_coverage.save(cov)


def _child(job_file: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the kernels print lands in the log, not in the protocol

    def emit(**ev) -> None:
        proto.write(json.dumps(ev, default=str) + "\n")
        proto.flush()

    threading.Thread(target=_watch_parent, daemon=True).start()
    job = Job(**json.loads(Path(job_file).read_text()))

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
            # pristine inputs for the repeated launches, made before the first call (a path may write
            # into its inputs: a cache, an in-place rotation)
            repeat = not path.golden and not os.environ.get(triton_capture.ENV)
            spare = [_clone(dev_inputs) for _ in range(REPEATS[job.device] - 1)] if repeat else []
            _sync(job.device)
            t1 = time.perf_counter()
            wall.update(inputs_s=t1 - t0, input_cache="hit" if hit else "built")
            outputs = path.run(dev_inputs, cases[name])
            _sync(job.device)
            t2 = time.perf_counter()
            seconds = t2 - t0
            wall["call_s"] = t2 - t1
            # clone: no shared storage; contiguous: what is stored (a path may return a permuted view)
            out = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in outputs.items()}
            contract = {k: {"device": v.device.type, "strides": list(v.stride())} for k, v in outputs.items()}
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
            detail["outputs"] = contract
            if spare:
                detail["repeats"] = _repeat(path, spare, cases[name], target, job.device)
            if SGL_KERNEL_CALLS:  # SGLang caught the stand-in's error and went on: say so beside the figure
                detail["sgl_kernel_absent_calls"] = sorted(set(SGL_KERNEL_CALLS))
            emit(event="result", case=name, status="ok", seconds=seconds, digest=dig, detail=detail)
        except Unavailable as exc:
            emit(event="result", case=name, status=f"skipped({exc})", seconds=time.perf_counter() - t0)
        except Absent as exc:
            emit(event="result", case=name, status=f"absent({exc})", seconds=time.perf_counter() - t0)
        except Exception as exc:  # a failing kernel is a measurement, not the end of the run
            traceback.print_exc()
            not_kernel = _not_the_kernel(exc)
            if not_kernel:  # the SGLang measured lacks the function, or the host cannot import it
                emit(event="result", case=name, status=not_kernel, seconds=time.perf_counter() - t0)
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


# launches of each path and case, back to back without a synchronization, compared bitwise: a race shows as
# outputs that differ between launches (on the CPU the interpreter runs one program at a time: a path
# that differs there draws on something it should not)
REPEATS = {"cuda": 3, "cpu": 2}


def _clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tensors.items()}


def _differing(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bytes differ (NaN payloads included); all of them where shape or dtype differ."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return max(a.numel(), b.numel())
    if a.numel() == 0:
        return 0
    x = a.contiguous().view(torch.uint8).reshape(a.numel(), -1)
    y = b.contiguous().view(torch.uint8).reshape(b.numel(), -1)
    return int((x != y).any(1).sum())


def _repeat(path, spare: list[dict], case, stored: Path, device: str) -> dict:
    """The path launched once per spare copy of its inputs, all before one synchronization, each
    launch's outputs kept alive and compared bitwise with the first launch's (as stored)."""
    try:
        again = [path.run(inputs, case) for inputs in spare]
        _sync(device)
    except Exception as exc:  # the figure is missing, and says why
        return {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]}
    first = load_file(str(stored))
    where: dict[str, int] = {}
    for outputs in again:
        for k, v in first.items():
            got = outputs.get(k)
            n = v.numel() if got is None else _differing(v, got.detach().cpu())
            where[k] = max(where.get(k, 0), n)
    return {"launches": 1 + len(again), "mismatched": sum(where.values()), "where": where}


def _not_the_kernel(exc: BaseException) -> str | None:
    """The status of an error that says nothing of the kernel (harness/workers/environment.py): the op
    file asked for a function this SGLang lacks (`absent`), a package of the import chain is not
    installed, or importing SGLang fails in another package (both `skipped`); else None."""
    try:
        root = sglang_src.sglang_root()
    except Unavailable:
        root = None
    absent = absent_from(exc, root, sglang_src.generated("__version__"))
    if absent:
        return f"absent({absent})"
    why = missing_module(exc) or environment_conflict(exc, root)
    return f"skipped({why})" if why else None


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
    names = sorted(m for m in set(sys.modules) - before if learnable(m))
    try:
        Path(file).write_text(json.dumps(names))
    except OSError:
        return
    emit(event="modules", file=file)


if __name__ == "__main__":
    raise SystemExit(child(sys.argv[1]))

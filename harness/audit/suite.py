"""The SM120 static audit: the kernels each SM120 path launches, compiled for SM120 (no GPU needed) and
checked against what SM120 has (harness/audit/sm120.py): shared memory per block (static and dynamic
together), registers and spills, no wgmma / tcgen05 (TMEM) instructions, and no cluster launch.

Capture runs the profile's implementations in the usual workers with the capture hooks of
harness/workers/ installed (Triton launches, SGLang's JIT CUDA builds and calls, TileLang kernels). Then
each kind is compiled in processes of its own: Triton kernels cross-compiled for `sm_120a`
(harness/audit/triton_kernels.py), JIT CUDA modules built with SGLang's own nvcc command and their launch
code evaluated (harness/audit/cuda_kernels.py), TileLang kernels lowered (harness/audit/tilelang_kernels.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from harness.audit import cuda_kernels, sm120, tilelang_kernels
from harness.audit.toolchain import run_child, with_toolkit
from harness.audit.triton_kernels import key, variants
from harness.parity.catalogue import Selection
from harness.parity.contract import Path as OpPath
from harness.parity.op import SM120
from harness.results import metrics as M
from harness.results.store import RunWriter, read_journal, row
from harness.workers import jit_capture, triton_capture
from harness.workers.executor import Executor, Slots
from harness.workers.forkserver import ForkServer
from harness.workers.worker import Job, run_path, worker_env

SUITE = "audit"
MAX_PARALLEL = 4  # paths audited at once: each a worker then its compilers, about a core and 1-3 GB each


def is_sm120_path(path: OpPath) -> bool:
    """An implementation SGLang can select on SM120: no arch restriction, or SM120 among its archs."""
    return not path.golden and (path.archs is None or any(a in SM120 for a in path.archs))


def run_audit(selections: list[Selection], writer: RunWriter, slots: Slots, seed: int) -> None:
    """Capture, then compile; rows are written per path as soon as its kernels are compiled. Paths are
    audited side by side, one per core (MAX_PARALLEL at most), all on the run's first device."""
    units = [(sel, impl) for sel in selections for impl in sel.impls if is_sm120_path(sel.op.paths[impl])]
    with tempfile.TemporaryDirectory(prefix="sm120-audit-") as tmp:
        audit = _PathAudit(writer, slots, seed, Path(tmp))
        # the capture workers' environment but for the case's capture file: forkable from this server
        server_env = with_toolkit(worker_env(None, slots.capability, slots.devices[0]))
        # each unit is a worker, then compilers: mostly one busy core each
        parallel = max(1, min(len(units), os.cpu_count() or 1, MAX_PARALLEL))
        ex: Executor = Executor(
            slots.cancelled, [slots.devices[0]] * parallel, server_env, writer.artifacts / "workers" / "forkserver.log"
        )
        ex.run(units, lambda unit, device, forks: audit.run(*unit, device, forks))


class _PathAudit:
    """One path at a time: capture its launches in a worker, then compile what it launched."""

    def __init__(self, writer: RunWriter, slots: Slots, seed: int, tmp: Path):
        self.writer, self.slots, self.seed, self.tmp = writer, slots, seed, tmp
        self.lock = threading.Lock()  # one writer and one console for every unit

    def _write(self, rows: list[dict]) -> None:
        with self.lock:
            self.writer.add(rows)

    def _row(self, op: str, impl: str, name: str, metric: str, value: float, **kw) -> dict:
        version = name.rsplit("/", 1)[-1] if name.count("/") >= 2 else hashlib.sha256(name.encode()).hexdigest()[:12]
        return row(self.writer.run_id, SUITE, f"{op}/{name}", version, impl, metric, value, **kw)

    def _not_captured(self, op: str, impl: str, why: str) -> None:
        status = f"skipped(cannot run it here to capture its launches: {why})"
        self._write([self._row(op, impl, "capture", M.KERNELS, float("nan"), unit="count", status=status)])

    def run(self, sel: Selection, impl: str, device: str | None, forks: ForkServer | None) -> None:
        """Capture one path's launches, then compile them; its rows are written when done."""
        op, path, capability = sel.op.name, sel.op.paths[impl], self.slots.capability
        reason = path.unsupported_reason(capability)
        # a JIT CUDA path reaches SGLang's load_jit without a GPU: try to capture it anyway
        attempt = reason is not None and capability is None and path.archs is None
        if reason is not None and not attempt:
            self._not_captured(op, impl, reason)
            return
        capture = self.tmp / f"{op}.{impl}.launches.jsonl"
        env = with_toolkit(worker_env(path, capability, device, **{triton_capture.ENV: str(capture)}))
        if attempt:  # it never runs a kernel here: let SGLang choose as on an SM120 host
            env[jit_capture.AS_SM120] = "1"
        job = Job(
            op_file=str(sel.op.file),
            path=impl,
            cases=[c.name for c in sel.cases],
            seed=self.seed,
            device="cpu" if capability is None else "cuda",
            outdir=str(self.tmp / "outputs" / op),
        )
        log = self.writer.artifacts / "workers" / f"audit.{op}.{impl}.log"
        timeout_s, cancelled = self.slots.timeout_s, self.slots.cancelled
        results = list(run_path(job, timeout_s=timeout_s, log=log, env=env, cancelled=cancelled, forks=forks))
        bad = [r for r in results if r.status not in ("ok",) and not r.status.startswith(("skipped", "absent"))]
        records = read_journal(capture)
        errors = [r["error"] for r in records if "error" in r]
        modules = {r["module"]: r for r in records if r.get("kind") == "cuda"}
        tl_kernels = list({json.dumps(r, sort_keys=True): r for r in records if r.get("kind") == "tilelang"}.values())
        calls = [r for r in records if r.get("kind") == "cuda_call"]
        todo = {}
        for launch in (r for r in records if "error" not in r and "kind" not in r):
            for v in variants(launch):
                todo.setdefault(key(v), v)
        # the message, not only the status: a capture that stops early misses the kernels after it
        failures = {r.case: f"{r.status}: {r.detail.get('error', '')}"[:300].rstrip(": ") for r in bad}
        if attempt and not todo and not modules and not tl_kernels:
            why = next((r.detail.get("error", "") for r in results if r.detail.get("error")), "")
            self._not_captured(op, impl, reason + (f"; without one it failed: {why[:300]}" if why else ""))
            return
        if attempt:  # the kernels never ran: their outputs were never going to be right
            failures = {}
        status = "ok" if not failures and not errors else "failed"
        detail = {
            "cases": len(results),
            "launches": len(records),
            "cuda_modules": sorted(modules),
            "errors": errors[:5],
            "path_failures": failures,
        }
        found = float(len(todo) + len(modules) + len(tl_kernels))
        kw = {"unit": "count", "status": status, "better": "higher", "detail": detail}
        rows = [self._row(op, impl, "capture", M.KERNELS, found, **kw)]
        # a folder per path: the compilers' files are named from this stem (with_suffix), and paths run
        # side by side
        stem = self.tmp / "paths" / f"{op}.{impl}" / "kernels"
        stem.parent.mkdir(parents=True, exist_ok=True)
        at = lambda *a, **k: self._row(op, impl, *a, **k)
        timeout_s = self.slots.timeout_s
        rows += _compile_rows(list(todo.values()), stem, timeout_s, at)
        rows += _cuda_rows(modules, calls, timeout_s, at)
        rows += _tilelang_rows(tl_kernels, stem, timeout_s, at)
        self._write(rows)
        over = sum(1 for r in rows if r["metric"] == M.SHARED_BYTES and r["value"] > sm120.SHARED_BYTES)
        print(
            f"{op}  {impl}  {status}: {len(todo)} Triton kernel variant(s) compiled for sm_120a, "
            f"{len(modules)} JIT CUDA module(s) built for SM120, "
            f"{len(tl_kernels)} TileLang kernel(s) lowered for sm_120a, "
            f"{over} over {sm120.SHARED_BYTES} B of shared memory",
            file=sys.stderr,
            flush=True,
        )


def _compile_rows(todo: list[dict], stem: Path, timeout_s: float, add) -> list[dict]:
    if not todo:
        return []
    launches, findings = stem.with_suffix(".todo.jsonl"), stem.with_suffix(".found.jsonl")
    launches.write_text("".join(json.dumps(v) + "\n" for v in todo))
    args = [str(launches), str(findings)]
    crash = run_child("harness.audit.triton_kernels", args, "compiler process", timeout_s * len(todo))
    found = {f["key"]: f for f in read_journal(findings)}
    rows = []
    for v in todo:
        k = key(v)
        spec = {
            "kind": "triton",
            "file": v["file"],
            "signature": v["signature"],
            "constexprs": v["constexprs"],
            "options": v["options"],
        }
        f = found.get(k)
        if f is None:
            rows.append(
                add(
                    k,
                    M.SHARED_BYTES,
                    float("nan"),
                    unit="B",
                    status="crashed",
                    detail={**spec, "error": crash or "no result"},
                )
            )
            continue
        if not f["ok"]:
            rows.append(
                add(k, M.SHARED_BYTES, float("nan"), unit="B", status="failed", detail={**spec, "error": f["error"]})
            )
            continue
        forbidden = sorted(set(f["ptx_forbidden"]) | set(f.get("sass_forbidden", [])))
        detail = {
            "kind": "triton",
            **spec,
            "target": f["target"],
            "num_warps": f["num_warps"],
            "num_stages": f["num_stages"],
        }
        rows.append(add(k, M.SHARED_BYTES, f[M.SHARED_BYTES], unit="B", detail={**detail, "limit": sm120.SHARED_BYTES}))
        # a Triton kernel's shared memory is all dynamic: what its launcher asks for
        rows.append(add(k, M.DYNAMIC_SHARED_BYTES, f[M.SHARED_BYTES], unit="B", detail=detail))
        if M.REGISTERS in f:
            rows.append(add(k, M.REGISTERS, f[M.REGISTERS], unit="count", detail=detail))
            rows.append(add(k, M.SPILL_BYTES, f["local_bytes"], unit="B", detail={**detail, "stack": f["stack_bytes"]}))
        rows.append(
            add(k, M.FORBIDDEN_INSTRUCTIONS, float(len(forbidden)), unit="count", detail={**detail, "found": forbidden})
        )
    return rows


def _short_name(demangled: str) -> str:
    """`void sglang::topk_transform_kernel<true>(sglang::TopKParams)` -> `topk_transform_kernel<true>`."""
    name = re.sub(r"^void ", "", demangled)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list is the first '(' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut].replace("sglang::", "").replace("/", "|")


def _cuda_rows(modules: dict[str, dict], calls: list[dict], timeout_s: float, add) -> list[dict]:
    """Per kernel of each captured JIT CUDA module and each distinct launch of it (block, dynamic
    shared memory, cluster): static + dynamic shared memory against SM120's, registers, spills,
    SASS SM120 lacks, cluster launches."""
    rows = []
    for name, module in modules.items():
        source = module["sources"][0] if module["sources"] else None
        base = {"kind": "cuda", "file": source, "module": name}
        try:
            found = cuda_kernels.audit_module(module, [c for c in calls if c["module"] == name], timeout_s)
        except (cuda_kernels.CudaAuditError, OSError, subprocess.TimeoutExpired) as exc:
            label = f"{name}/build/{hashlib.sha256(module['build_file'].encode()).hexdigest()[:8]}"
            rows.append(
                add(label, M.SHARED_BYTES, float("nan"), unit="B", status="failed", detail={**base, "error": str(exc)})
            )
            continue
        base["command"] = found["command"]
        for call in found["calls"]:
            if "error" in call:  # SGLang's host code refused the captured arguments, or asked what is not answered
                label = f"{name}/{call['function']}/{hashlib.sha256(json.dumps(call['args']).encode()).hexdigest()[:8]}"
                detail = {**base, "error": call["error"], "args": call["args"], "events": call["events"]}
                rows.append(add(label, M.SHARED_BYTES, float("nan"), unit="B", status="failed", detail=detail))
        for mangled, res in found["kernels"].items():
            events = [e for c in found["calls"] for e in c["events"] if e.get("kernel") == mangled]
            opt_in = max((e["bytes"] for e in events if e["event"] == "max_dynamic_shared"), default=0)
            groups: dict[tuple, list[dict]] = {}
            for e in (e for e in events if e["event"] == "launch"):
                groups.setdefault((tuple(e["block"]), e[M.DYNAMIC_SHARED_BYTES], tuple(e["cluster"] or ())), []).append(
                    e
                )
            for (block, launch_dyn, cluster), launches in groups.items() or [(((), None, ()), [])]:
                # cudaFuncSetAttribute past what the device has fails even before a launch asks for it
                dynamic = max(launch_dyn or 0, opt_in)
                shape = ".".join(
                    [f"b{'x'.join(map(str, block))}" if block else "not-launched"]
                    + ([f"dyn{dynamic}"] if launches else [])
                    + ([f"cluster{'x'.join(map(str, cluster))}"] if cluster else [])
                )
                blob = json.dumps([found["command"], module["units"], mangled, block, dynamic, cluster])
                label = f"{_short_name(res['name'])}/{shape}/{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
                detail = {
                    **base,
                    "kernel": res["name"],
                    "symbol": mangled,
                    "target": res["target"],
                    "launched": bool(launches),
                    "block": list(block) or None,
                    "grids": sorted({tuple(e["grid"]) for e in launches}),
                    "cluster": list(cluster) or None,
                    "pdl": any(e["pdl"] for e in launches),
                    "static_shared_bytes": res["static_shared"],
                    "dynamic_shared_bytes_launch": launch_dyn,
                    "dynamic_shared_bytes_opt_in": opt_in,
                    # how the dynamic figure was obtained: SGLang's launch code, run, not re-derived
                    "dynamic_shared_from": "evaluated: SGLang's host launch code built for SM120 and called with "
                    "the captured arguments against a recording CUDA runtime (RTX PRO 6000 attributes)",
                }
                total = res["static_shared"] + dynamic
                rows.append(add(label, M.SHARED_BYTES, total, unit="B", detail={**detail, "limit": sm120.SHARED_BYTES}))
                rows.append(add(label, M.DYNAMIC_SHARED_BYTES, dynamic, unit="B", detail=detail))
                rows.append(add(label, M.REGISTERS, res[M.REGISTERS], unit="count", detail=detail))
                rows.append(
                    add(
                        label,
                        M.SPILL_BYTES,
                        res["local_bytes"],
                        unit="B",
                        detail={**detail, "stack": res["stack_bytes"]},
                    )
                )
                rows.append(
                    add(
                        label,
                        M.FORBIDDEN_INSTRUCTIONS,
                        float(len(res["sass_forbidden"])),
                        unit="count",
                        detail={**detail, "found": res["sass_forbidden"]},
                    )
                )
                rows.append(
                    add(label, M.CLUSTER_LAUNCHES, float(len(launches) if cluster else 0), unit="count", detail=detail)
                )
    return rows


def _tilelang_rows(kernels: list[dict], stem: Path, timeout_s: float, add) -> list[dict]:
    """Per device kernel of each captured TileLang kernel, lowered for sm_120a: static + dynamic shared
    memory against SM120's, registers, spills, SASS SM120 lacks."""
    if not kernels:
        return []
    found, crash = tilelang_kernels.run(kernels, stem, timeout_s * len(kernels))
    rows = []
    for i, rec in enumerate(kernels):
        blob = json.dumps(
            [rec["module"], rec["name"], rec["args"], rec["kwargs"], rec["options"]]
            + ([rec["factory"]] if rec.get("factory") else []),
            sort_keys=True,
        )
        tag = hashlib.sha256(blob.encode()).hexdigest()[:8]
        args = ",".join(str(a) for a in rec["args"] if isinstance(a, (int, float, str)))[:60]
        base = {"kind": "tilelang", "file": rec["file"], "function": rec["qualname"], "args": rec["args"],
                "kwargs": rec["kwargs"], "options": rec["options"],
                **({"factory": rec["factory"]} if rec.get("factory") else {})}  # fmt: skip
        f = found.get(i)
        if f is None or not f["ok"]:
            status = (
                "crashed" if f is None else ("failed" if "error" in f else f"skipped(not lowered here: {f['skipped']})")
            )
            error = (crash or "no result") if f is None else f.get("error")
            rows.append(
                add(
                    f"{rec['name']}/{args or 'default'}/{tag}",
                    M.SHARED_BYTES,
                    float("nan"),
                    unit="B",
                    status=status,
                    detail={**base, "error": error},
                )  # fmt: skip
            )
            continue
        for k in f["kernels"]:
            dynamic, static = k["dynamic_shared"], k.get("static_shared", 0)
            detail = {
                **base,
                "kernel": k["kernel"],
                "target": f["target"],
                "tilelang": f["tilelang"],
                "thread_extent": k["thread_extent"],
                "static_shared_bytes": static,
                "dynamic_shared_from": "TileLang's lowering: the dyn_shared_memory_buf its host code launches the "
                "kernel with, for the arguments the path passed",
            }
            label = f"{k['kernel']}/{args or 'default'}/{tag}"
            rows.append(
                add(label, M.SHARED_BYTES, static + dynamic, unit="B", detail={**detail, "limit": sm120.SHARED_BYTES})
            )
            rows.append(add(label, M.DYNAMIC_SHARED_BYTES, dynamic, unit="B", detail=detail))
            if M.REGISTERS in k:
                rows.append(add(label, M.REGISTERS, k[M.REGISTERS], unit="count", detail=detail))
                rows.append(
                    add(label, M.SPILL_BYTES, k["local_bytes"], unit="B", detail={**detail, "stack": k["stack_bytes"]})
                )
            forbidden = k.get("sass_forbidden", [])
            rows.append(
                add(
                    label,
                    M.FORBIDDEN_INSTRUCTIONS,
                    float(len(forbidden)),
                    unit="count",
                    detail={**detail, "found": forbidden},
                )
            )
    return rows

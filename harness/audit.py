"""The SM120 static audit: the kernels each SM120 path launches, compiled for SM120 (no GPU needed)
and checked against what SM120 has: 101376 B of shared memory per block (static and dynamic
together), registers and spills, no wgmma / tcgen05 (TMEM) instructions, and no cluster launch.

Capture runs the profile's implementations in the usual workers with harness/triton_capture.py and
harness/jit_capture.py installed. Triton kernels are cross-compiled for `sm_120a` in a subprocess of
their own, without TRITON_INTERPRET, so a compiler crash is one kernel's finding and not the end of
the run; SGLang's JIT CUDA modules are built with SGLang's own nvcc command and their launch code
evaluated by harness/cuda_audit.py:

    python -m harness.audit LAUNCHES.jsonl FINDINGS.jsonl
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from harness import cuda_audit, jit_capture, tilelang_audit
from harness import metrics as M
from harness.store import read_journal

SM120_SHARED_BYTES = 101376  # cudaDevAttrMaxSharedMemoryPerBlockOptin on compute capability 12.0
SM120 = ((12, 0), (12, 1))
# instructions of SM90/SM100 that SM120 does not have: warpgroup MMA, 5th-gen tensor core and TMEM
FORBIDDEN_PTX = re.compile(r"\b(wgmma\.[\w.]+|tcgen05\.[\w.]+)")
FORBIDDEN_SASS = re.compile(r"\b(HGMMA|UTCHMMA|UTCQMMA|UTCMMA|UTCBAR|LDTM|STTM)\b")
# SGLang keeps its cluster paths off SM120 (topk v2's is ~144 KB of shared memory): a cluster launch on
# an SM120 path means such a guard was bypassed
MAX_PARALLEL = 4  # paths audited at once: each a worker then its compilers, about a core and 1-3 GB each
CEILINGS = {M.SHARED_BYTES: float(SM120_SHARED_BYTES), M.FORBIDDEN_INSTRUCTIONS: 0.0, M.CLUSTER_LAUNCHES: 0.0}


def variants(launch: dict) -> list[dict]:
    """One compile per autotune config (or the launch's own options)."""
    if launch.get("configs"):
        out = []
        for c in launch["configs"]:
            opts = {k: c[k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if c.get(k) is not None}
            out.append({**launch, "constexprs": {**launch["constexprs"], **c["kwargs"]}, "options": opts})
        return out
    return [launch]


def key(v: dict) -> str:
    """A stable name: the constexprs that vary between configs, the launch options, and a hash of
    the whole specialisation."""
    blob = json.dumps({k: v[k] for k in ("file", "name", "signature", "constexprs", "options")}, sort_keys=True)
    c = v["constexprs"]
    # block sizes and boolean flags tell the variants apart; the rest is in the hash
    tuned = ".".join(f"{k}={c[k]}" for k in sorted(c) if (k.startswith("B") and k.isupper()) or isinstance(c[k], bool))
    opts = ".".join(
        f"{k[4] if k.startswith('num_') else k}{val}"
        for k, val in sorted(v["options"].items())
        if not (k == "num_ctas" and val == 1)
    )
    label = ".".join(x for x in (tuned, opts) if x)
    return f"{v['name']}/{label or 'default'}/{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _tool(name: str) -> str | None:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else None


def _load_jit(v: dict):
    from triton.runtime.jit import JITFunction

    from harness.sglang_src import sglang_root

    module = None
    if v["module"].startswith("sglang."):
        root = sglang_root()
        if root and str(root) not in sys.path:
            sys.path.insert(0, str(root))
        module = importlib.import_module(v["module"])
    else:
        name = "_sm120_audit_" + hashlib.sha1(v["file"].encode()).hexdigest()[:10]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, v["file"])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    fn = getattr(module, v["name"])
    while not isinstance(fn, JITFunction):
        fn = fn.fn  # through Autotuner / Heuristics
    return fn


def _resources(cubin: bytes) -> dict:
    """Registers, local memory (spills) and stack, as cuobjdump reads them from the cubin."""
    tool = _tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=120).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
    out = {"sass_forbidden": sorted(set(FORBIDDEN_SASS.findall(sass)))}
    if m:
        out.update(registers=int(m[1]), stack_bytes=int(m[2]), static_shared=int(m[3]), local_bytes=int(m[4]))
    return out


def compile_one(v: dict, arch: int = 120) -> dict:
    """Cross-compile one launch variant (for sm_120a unless told otherwise) and read what it needs."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from harness.triton_capture import DTYPE_KEY

    fn = _load_jit(v)
    constexprs = {
        k: tl.dtype(val[DTYPE_KEY]) if isinstance(val, dict) and DTYPE_KEY in val else val
        for k, val in v["constexprs"].items()
    }
    src = ASTSource(fn, v["signature"], constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(v["options"]))
    ptx = kernel.asm["ptx"]
    target = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE)
    found = {
        M.SHARED_BYTES: int(kernel.metadata.shared),
        "num_warps": int(kernel.metadata.num_warps),
        "num_stages": int(kernel.metadata.num_stages),
        "target": target.group(1) if target else None,
        "ptx_forbidden": sorted(set(FORBIDDEN_PTX.findall(ptx))),
    }
    found.update(_resources(kernel.asm["cubin"]))
    return found


def compile_all(launches: list[dict], out: Path) -> None:
    """Child side: compile every variant, one JSON line each (written as it goes)."""
    os.environ.pop("TRITON_INTERPRET", None)
    with open(out, "a", encoding="utf-8") as f:
        for v in launches:
            try:
                result = {"key": key(v), "ok": True, **compile_one(v)}
            except Exception as exc:
                # Triton's CompilationError quotes the source; the reason is in the chained exception
                cause = f" (because {type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
                text = " ".join(str(exc).split())
                result = {"key": key(v), "ok": False, "error": f"{type(exc).__name__}: {text[:1500]}{cause[:1000]}"}
            f.write(json.dumps(result) + "\n")
            f.flush()


if __name__ == "__main__":
    todo = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
    compile_all(todo, Path(sys.argv[2]))


# ---------------------------------------------------------------------------------------------
# the parent side: capture, compile, store


def is_sm120_path(path) -> bool:
    """An implementation SGLang can select on SM120: no arch restriction, or SM120 among its archs."""
    return not path.golden and (path.archs is None or any(a in SM120 for a in path.archs))


def run_audit(selections, writer, settings) -> None:
    """Capture, then compile; rows are written per path as soon as its kernels are compiled."""
    from harness.forkserver import ForkServer
    from harness.store import row
    from harness.worker import Job, kill_all, run_path, worker_env

    lock = threading.Lock()  # one writer and one console for every unit

    def write(rows: list[dict]) -> None:
        with lock:
            writer.add(rows)

    def add(op: str, impl: str, name: str, metric: str, value: float, **kw) -> dict:
        version = name.rsplit("/", 1)[-1] if name.count("/") >= 2 else hashlib.sha256(name.encode()).hexdigest()[:12]
        return row(writer.run_id, "audit", f"{op}/{name}", version, impl, metric, value, **kw)

    with tempfile.TemporaryDirectory(prefix="sm120-audit-") as tmp:
        tmp = Path(tmp)
        # the capture workers' environment but for the case's capture file: forkable from this server
        server_env = cuda_audit.with_toolkit(worker_env(None, settings.capability, settings.slots[0]))
        try:
            forks = ForkServer(server_env, writer.artifacts / "workers" / "forkserver.log")
        except OSError:  # every capture worker then starts afresh, as it always could
            forks = None

        def audit_path(sel, impl: str) -> None:
            """Capture one path's launches, then compile them; its rows are written when done."""
            op = sel.op.name
            if settings.cancelled.is_set():
                return
            path = sel.op.paths[impl]
            if not is_sm120_path(path):
                return
            reason = path.unsupported_reason(settings.capability)
            # a JIT CUDA path reaches SGLang's load_jit without a GPU: try to capture it anyway
            attempt = reason is not None and settings.capability is None and path.archs is None
            if reason is not None and not attempt:
                write(
                    [
                        add(
                            op,
                            impl,
                            "capture",
                            M.KERNELS,
                            float("nan"),
                            unit="count",
                            status=f"skipped(cannot run it here to capture its launches: {reason})",
                        )
                    ]
                )
                return
            capture = tmp / f"{op}.{impl}.launches.jsonl"
            env = cuda_audit.with_toolkit(
                worker_env(path, settings.capability, settings.slots[0], SM120_HARNESS_CAPTURE=str(capture))
            )
            if attempt:  # it never runs a kernel here: let SGLang choose as on an SM120 host
                env[jit_capture.AS_SM120] = "1"
            job = Job(
                op_file=str(sel.op.file),
                path=impl,
                cases=[c.name for c in sel.cases],
                seed=settings.seed,
                device="cpu" if settings.capability is None else "cuda",
                outdir=str(tmp / "outputs" / op),
            )
            log = writer.artifacts / "workers" / f"audit.{op}.{impl}.log"
            results = list(run_path(job, timeout_s=settings.timeout_s, log=log, env=env, forks=forks))
            bad = [r for r in results if r.status not in ("ok",) and not r.status.startswith("skipped")]
            records = read_journal(capture)
            errors = [r["error"] for r in records if "error" in r]
            modules = {r["module"]: r for r in records if r.get("kind") == "cuda"}
            tl_kernels = list(
                {json.dumps(r, sort_keys=True): r for r in records if r.get("kind") == "tilelang"}.values()
            )
            calls = [r for r in records if r.get("kind") == "cuda_call"]
            todo = {}
            for launch in (r for r in records if "error" not in r and "kind" not in r):
                for v in variants(launch):
                    todo.setdefault(key(v), v)
            # the message, not only the status: a capture that stops early misses the kernels after it
            failures = {r.case: f"{r.status}: {r.detail.get('error', '')}"[:300].rstrip(": ") for r in bad}
            if attempt and not todo and not modules and not tl_kernels:
                why = next((r.detail.get("error", "") for r in results if r.detail.get("error")), "")
                write(
                    [
                        add(
                            op,
                            impl,
                            "capture",
                            "kernels",
                            float("nan"),
                            unit="count",
                            status=f"skipped(cannot run it here to capture its launches: {reason}"
                            + (f"; without one it failed: {why[:300]}" if why else "")
                            + ")",
                        )
                    ]
                )
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
            rows = [
                add(
                    op,
                    impl,
                    "capture",
                    M.KERNELS,
                    float(len(todo) + len(modules) + len(tl_kernels)),
                    unit="count",
                    status=status,
                    better="higher",
                    detail=detail,
                )
            ]
            # a folder per path: the compilers' files are named from this stem (with_suffix), and
            # paths run side by side
            stem = tmp / "paths" / f"{op}.{impl}" / "kernels"
            stem.parent.mkdir(parents=True, exist_ok=True)
            rows += _compile_rows(
                list(todo.values()),
                stem,
                settings,
                lambda *a, op=op, impl=impl, **k: add(op, impl, *a, **k),
            )
            at = lambda *a, op=op, impl=impl, **k: add(op, impl, *a, **k)
            rows += _cuda_rows(modules, calls, settings, at)
            rows += _tilelang_rows(tl_kernels, stem, settings, at)
            write(rows)
            over = sum(1 for r in rows if r["metric"] == M.SHARED_BYTES and r["value"] > SM120_SHARED_BYTES)
            print(
                f"{op}  {impl}  {status}: {len(todo)} Triton kernel variant(s) compiled for sm_120a, "
                f"{len(modules)} JIT CUDA module(s) built for SM120, "
                f"{len(tl_kernels)} TileLang kernel(s) lowered for sm_120a, "
                f"{over} over {SM120_SHARED_BYTES} B of shared memory",
                file=sys.stderr,
                flush=True,
            )

        units = [(sel, impl) for sel in selections for impl in sel.impls]
        # each unit is a worker, then compilers: mostly one busy core each
        ex = ThreadPoolExecutor(max(1, min(len(units), os.cpu_count() or 1, MAX_PARALLEL)))
        try:
            futures = [ex.submit(audit_path, sel, impl) for sel, impl in units]
            while wait(futures, timeout=0.5).not_done:  # timed, so that ^C and SIGTERM get through
                pass
            for f in futures:
                f.result()
        except BaseException:
            settings.cancelled.set()
            ex.shutdown(wait=False, cancel_futures=True)
            kill_all()
            raise
        finally:
            ex.shutdown(wait=True)
            if forks is not None:
                forks.close()


def _compile_rows(todo: list[dict], stem: Path, settings, add) -> list[dict]:
    if not todo:
        return []
    launches, findings = stem.with_suffix(".todo.jsonl"), stem.with_suffix(".found.jsonl")
    launches.write_text("".join(json.dumps(v) + "\n" for v in todo))
    crash = cuda_audit.run_child(
        "harness.audit", [str(launches), str(findings)], "compiler process", settings.timeout_s * len(todo)
    )
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
        rows.append(add(k, M.SHARED_BYTES, f[M.SHARED_BYTES], unit="B", detail={**detail, "limit": SM120_SHARED_BYTES}))
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


def _cuda_rows(modules: dict[str, dict], calls: list[dict], settings, add) -> list[dict]:
    """Per kernel of each captured JIT CUDA module and each distinct launch of it (block, dynamic
    shared memory, cluster): static + dynamic shared memory against SM120's, registers, spills,
    SASS SM120 lacks, cluster launches."""
    rows = []
    for name, module in modules.items():
        source = module["sources"][0] if module["sources"] else None
        base = {"kind": "cuda", "file": source, "module": name}
        try:
            found = cuda_audit.audit_module(module, [c for c in calls if c["module"] == name], settings.timeout_s)
        except (cuda_audit.CudaAuditError, OSError, subprocess.TimeoutExpired) as exc:
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
                rows.append(add(label, M.SHARED_BYTES, total, unit="B", detail={**detail, "limit": SM120_SHARED_BYTES}))
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


def _tilelang_rows(kernels: list[dict], stem: Path, settings, add) -> list[dict]:
    """Per device kernel of each captured TileLang kernel, lowered for sm_120a: static + dynamic shared
    memory against SM120's, registers, spills, SASS SM120 lacks."""
    if not kernels:
        return []
    found, crash = tilelang_audit.run(kernels, stem, settings.timeout_s * len(kernels))
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
                add(label, M.SHARED_BYTES, static + dynamic, unit="B", detail={**detail, "limit": SM120_SHARED_BYTES})
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

"""The Triton kernels of the audit: each captured launch (harness/workers/triton_capture.py) cross-compiled
for `sm_120a`, one autotune config at a time, and what it needs read from the result: shared memory,
registers and spills (cuobjdump), instructions SM120 lacks in its PTX and SASS. It runs in a subprocess of
its own, without TRITON_INTERPRET, so a compiler crash is one kernel's finding and not the end of the run:

    python -m harness.audit.triton_kernels LAUNCHES.jsonl FINDINGS.jsonl
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
from pathlib import Path

from harness.audit import sm120
from harness.audit.toolchain import triton_tool
from harness.results import metrics as M
from harness.workers.sglang_src import sglang_root
from harness.workers.triton_capture import DTYPE_KEY


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


def _load_jit(v: dict):
    from triton.runtime.jit import JITFunction

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
    tool = triton_tool("cuobjdump")
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=120).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
    out = {"sass_forbidden": sorted(set(sm120.FORBIDDEN_SASS.findall(sass)))}
    if m:
        out.update(registers=int(m[1]), stack_bytes=int(m[2]), static_shared=int(m[3]), local_bytes=int(m[4]))
    return out


def compile_one(v: dict, arch: int = 120) -> dict:
    """Cross-compile one launch variant (for sm_120a unless told otherwise) and read what it needs."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

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
        "ptx_forbidden": sorted(set(sm120.FORBIDDEN_PTX.findall(ptx))),
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

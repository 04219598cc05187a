"""The SM120 audit of TileLang kernels, without a GPU: each `@tilelang.jit` function a path built
(harness/workers/tilelang_capture.py records it with its arguments and jit options) is lowered again by the
installed tilelang for the target `{"kind": "cuda", "arch": "sm_120a"}`, and its CUDA source compiled
to a cubin with TileLang's own nvcc options.

Per device kernel: the dynamic shared memory is TileLang's launch parameter (`dyn_shared_memory_buf`
of the lowered device function, what its host code passes at launch); static shared memory, registers,
spills and SASS come from the cubin through cuobjdump. A jit function that takes tensors (TileLang's
lazy style, shapes inferred from them) is lowered from CPU tensors of the captured shapes.

Findings are cached by the hash of the kernel's record, its source file and the tilelang version.

    python -m harness.audit.tilelang_kernels RECORDS.json FINDINGS.jsonl     (one process for all kernels)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from harness.audit.cuda_kernels import resources
from harness.audit.toolchain import cache_root, run_child
from harness.results.store import read_journal
from harness.workers.jit_capture import sm120_choices
from harness.workers.sglang_src import import_module

TARGET = {"kind": "cuda", "arch": "sm_120a"}


_lowered: dict[str, list[dict]] = {}  # per process: a PrimFunc's findings by its structural hash


class NotReproduced(Exception):
    """A captured kernel the audit cannot lower again here; the message says why."""


def _cache_file(record: dict) -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tl_version = version("tilelang")
        source = Path(record["file"]).read_bytes()
    except (PackageNotFoundError, OSError, TypeError):
        return None
    key = hashlib.sha256(json.dumps([record, tl_version, TARGET]).encode() + source).hexdigest()[:20]
    return cache_root().parent / "tilelang-audit" / f"{key}.json"


def _original(obj):
    """The Python function under SGLang's lazy wrapper and TileLang's JIT object."""
    for _ in range(8):
        if hasattr(obj, "__wrapped__"):
            obj = obj.__wrapped__
        elif hasattr(getattr(obj, "func", None), "orig_func"):
            obj = obj.func.orig_func
        else:
            break
    return obj


def _tensor(a):
    import torch

    if isinstance(a, dict) and "tensor" in a:
        return torch.empty(a["tensor"]["shape"], dtype=getattr(torch, a["tensor"]["dtype"]))
    return a


def _from_factory(module, record: dict):
    """A kernel defined inside a function: call that function again with the captured arguments,
    under SGLang's SM120 choices (its closure reads them: PDL, pass configs), and take the function
    it decorates under the kernel's name. Nothing is compiled here; `lower` does that for SM120."""
    import tilelang

    outer = module
    for part in record["factory"]["qualname"].split("."):
        outer = getattr(outer, part)
    outer = getattr(outer, "__wrapped__", outer)  # past functools.cache: the body must run
    built: dict = {}

    def jit(func=None, **options):
        def decorate(fn):
            built.setdefault(fn.__name__, fn)
            return lambda *a, **k: None

        return decorate(func) if callable(func) else decorate

    real, tilelang.jit = tilelang.jit, jit
    try:
        sm120_choices()
        outer(**{k: _tensor(v) for k, v in record["factory"]["kwargs"].items()})
    finally:
        tilelang.jit = real
    if record["name"] not in built:
        raise NotReproduced(f"{record['factory']['qualname']} no longer defines {record['name']}")
    return built[record["name"]]


def lower(record: dict) -> dict:
    """Lower one captured kernel for SM120 and read what each of its device kernels needs."""
    import tilelang
    from tilelang import tvm

    if record["module"].startswith("sglang."):
        module = import_module(record["module"])
    else:  # a kernel file loaded by path (an op file's own kernel)
        name = "_sm120_tilelang_" + hashlib.sha1(record["file"].encode()).hexdigest()[:10]
        spec = importlib.util.spec_from_file_location(name, record["file"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if hasattr(module, "_load_tilelang"):  # SGLang's mhc binds `T` to real TileLang only on first use
        module._load_tilelang()
    if record.get("factory"):
        fn = _from_factory(module, record)
    elif record["qualname"] != record["name"]:
        raise NotReproduced(f"{record['qualname']} is defined inside a function the capture could not name")
    else:
        fn = _original(getattr(module, record["name"]))
    options = {k: v for k, v in record["options"].items() if k != "target"}
    jit = tilelang.jit(**options, target=tvm.target.Target(TARGET))(fn)
    args, kwargs = [_tensor(a) for a in record["args"]], {k: _tensor(v) for k, v in record["kwargs"].items()}
    # lowering only, never a launch: a jit function that takes tensors (shapes inferred from them) is
    # compiled from CPU tensors of the captured shapes, through TileLang's own mode inference
    jit.mode = jit._infer_jit_mode(*args, **kwargs)
    jit.func.set_mode(jit.mode)
    prim = jit.get_tir(*args, **kwargs)
    flags = [jit.compile_flags] if isinstance(jit.compile_flags, str) else jit.compile_flags
    # a kernel whose token count is a dynamic dimension is one PrimFunc for every case: lowered once
    key = json.dumps([str(tvm.ir.structural_hash(prim)), jsonable_configs(jit.pass_configs), flags])
    if key not in _lowered:
        _lowered[key] = _lower_prim(prim, jit.pass_configs, flags)
    return {"kernels": _lowered[key], "target": TARGET["arch"], "tilelang": tilelang.__version__}


def jsonable_configs(configs: dict | None) -> dict:
    return {str(getattr(k, "value", k)): str(v) for k, v in (configs or {}).items()}


def _lower_prim(prim, pass_configs: dict | None, flags: list[str] | None) -> list[dict]:
    """TileLang's own lowering for SM120, pass configs applied as its JITKernel applies them (but not
    its host wrapper's build, a second nvcc run of no use here); the CUDA source compiled to a cubin
    with TileLang's nvcc options; per device kernel what it needs."""
    import tilelang
    import tilelang.contrib.nvcc as tl_nvcc
    from tilelang import tvm

    target = tvm.target.Target(TARGET)
    with tvm.transform.PassContext(opt_level=3, config=dict(pass_configs or {})), target:
        artifact = tilelang.lower(prim, target=target)
    with target, tempfile.TemporaryDirectory(prefix="sm120-tilelang-") as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        options = tl_nvcc.default_compile_options(flags)
        cubin.write_bytes(tl_nvcc.compile_cuda(artifact.kernel_source, target_format="cubin", options=options))
        found = resources([cubin])
    kernels = []
    for gv, f in artifact.device_mod.functions.items():
        name = str(f.attrs.get("global_symbol", gv.name_hint))
        kernels.append(
            {
                "kernel": name,
                "dynamic_shared": int(f.attrs.get("dyn_shared_memory_buf", 0)),
                "thread_extent": str(f.attrs.get("thread_extent", "")),
                **found.get(name, {}),
            }
        )
    return kernels


def lower_all(records: list[dict], out: Path) -> None:
    """Child side: one JSON line per record, cached, written as it goes."""
    os.environ["TILELANG_DISABLE_CACHE"] = "1"  # a kernel from TileLang's cache has no device module
    with open(out, "a", encoding="utf-8") as f:
        for i, record in enumerate(records):
            cache = _cache_file(record)
            cached = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
            if cached.get("ok"):
                result = {**cached, "cached": True}
            else:
                try:
                    result = {"ok": True, **lower(record)}
                except NotReproduced as exc:
                    result = {"ok": False, "skipped": str(exc)}
                except Exception as exc:  # a lowering or compile error is this kernel's finding
                    result = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]}
                if cache is not None and result["ok"]:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    part = cache.with_suffix(f".{os.getpid()}.part")  # whole or absent, for a concurrent reader
                    part.write_text(json.dumps(result))
                    os.replace(part, cache)
            f.write(json.dumps({"index": i, **result}) + "\n")
            f.flush()


def run(records: list[dict], stem: Path, timeout_s: float) -> tuple[dict[int, dict], str | None]:
    """Parent side: lower every record in one child process; its results by record index, and why
    the child ended early if it did."""
    todo, found = stem.with_suffix(".tilelang.json"), stem.with_suffix(".tilelang.found.jsonl")
    todo.write_text(json.dumps(records))

    crash = run_child("harness.audit.tilelang_kernels", [str(todo), str(found)], "TileLang process", timeout_s)
    return {r["index"]: r for r in read_journal(found)}, crash


if __name__ == "__main__":
    lower_all(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))

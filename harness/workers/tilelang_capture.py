"""Recording the TileLang kernels a path builds, for the SM120 audit: which `@tilelang.jit` function,
with which arguments (the block sizes SGLang picked) and which jit options (pass configs, out_idx).
The path gets a kernel that records its call and runs nothing; harness/audit/tilelang_kernels.py lowers the
same function for SM120 later, without a GPU.

Installed in a worker beside harness/workers/triton_capture.py when `SM120_HARNESS_CAPTURE` names a file and
tilelang is installed; one JSON object per kernel built, `"kind": "tilelang"`."""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import threading
from typing import Any

from harness.workers.triton_capture import ENV

_lock = threading.Lock()


def jsonable(v: Any) -> Any:
    """A jit argument or option as the audit passes it back; a tensor by its layout only."""
    if isinstance(v, enum.Enum):
        return v.value
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(jsonable(k)): jsonable(x) for k, x in v.items()}
    if hasattr(v, "data_ptr") and hasattr(v, "shape"):
        return {"tensor": {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}}
    return str(v)


def factory_call(fn) -> dict | None:
    """For a kernel defined inside a function (SGLang's split-k mHC builds its kernels in a cached
    factory whose arguments are the block sizes), that function's qualname and the arguments of the
    call being decorated, read from its live frame; None when there is no such module-level function."""
    frame = sys._getframe(1)
    while frame is not None and fn.__code__ not in frame.f_code.co_consts:
        frame = frame.f_back
    outer = fn.__qualname__.rsplit(".<locals>.", 1)[0]
    if frame is None or "<locals>" in outer:
        return None
    info = inspect.getargvalues(frame)
    if info.varargs or info.keywords:
        return None
    return {"qualname": outer, "kwargs": jsonable({a: frame.f_locals[a] for a in info.args})}


def patch(tilelang, path: str) -> None:

    def write(record: dict) -> None:
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def jit(func=None, **options):
        def decorate(fn):
            factory = factory_call(fn) if "<locals>" in fn.__qualname__ else None

            def build(*args, **kwargs):
                write(
                    {
                        "kind": "tilelang",
                        "module": fn.__module__,
                        "name": fn.__name__,
                        "qualname": fn.__qualname__,
                        "file": inspect.getsourcefile(fn),
                        "args": jsonable(list(args)),
                        "kwargs": jsonable(kwargs),
                        "options": jsonable(options),
                        **({"factory": factory} if factory else {}),
                    }
                )
                return lambda *a, **k: None  # the kernel: runs nothing

            build.__wrapped__ = fn
            return build

        return decorate(func) if callable(func) else decorate

    tilelang.jit = jit


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches tilelang when something imports it (most workers never do: importing it for them
    would cost seconds each)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def find_spec(self, fullname, search_path, target=None):
        if fullname != "tilelang":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, search_path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module, run=run):
            run(module)
            patch(module, self.path)

        spec.loader.exec_module = exec_module
        return spec


def install_from_env() -> None:
    if os.environ.get(ENV):
        sys.meta_path.insert(0, _PatchOnImport(os.environ[ENV]))

"""Recording the Triton kernels a path launches, compiled or under the interpreter, with what
decides their code: the argument types and specialisations, the constexprs, num_warps/num_stages,
and every config of an autotuned kernel (not only the one the autotuner picked).

Installed in a worker when `SM120_HARNESS_CAPTURE` names a file; one JSON object per launch."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

ENV = "SM120_HARNESS_CAPTURE"
ALL_CONFIGS = "sm120_harness_all_configs"  # where keep_first_config leaves the full list
_local = threading.local()

_DTYPES = {
    "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "float8_e4m3fn": "fp8e4nv",
    "float8_e5m2": "fp8e5", "int8": "i8", "uint8": "u8", "int16": "i16", "int32": "i32", "int64": "i64",
    "bool": "i1", "uint32": "u32", "uint64": "u64",
}  # fmt: skip


def capturing() -> bool:
    """Whether this worker records its launches for the SM120 audit (which compiles what it records:
    a path should launch there what it launches on SM120, not a shortcut for the interpreter)."""
    return bool(os.environ.get(ENV))


def keep_first_config(kernel) -> None:
    """Under the interpreter an autotuner cannot benchmark its configs: run the first, but keep the
    full list where the capture (and so the SM120 audit) still sees it."""
    if not hasattr(kernel, ALL_CONFIGS):
        setattr(kernel, ALL_CONFIGS, list(kernel.configs))
    kernel.configs = kernel.configs[:1]


@contextlib.contextmanager
def pinned_config(kernel, **match: Any) -> Iterator[Any]:
    """Run an autotuned kernel with the one config of SGLang's list whose kwargs, num_warps and num_stages
    match `match` (as a GPU's autotuner might pick it for some device), the whole list restored after. A
    config SGLang no longer lists raises LookupError naming what it lists."""
    full = getattr(kernel, ALL_CONFIGS, None) or list(kernel.configs)

    def fields(c) -> dict:
        return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}

    found = [c for c in full if all(fields(c).get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise LookupError(f"{len(found)} autotune configs match {match}; the kernel lists {[fields(c) for c in full]}")
    before = kernel.configs
    kernel.configs = found  # one config: the autotuner runs it without benchmarking or caching
    try:
        yield found[0]
    finally:
        kernel.configs = before


DTYPE_KEY = "tl.dtype"  # a constexpr that is a Triton dtype (a kernel's compute_type), kept as {DTYPE_KEY: name}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    import triton.language as tl

    if isinstance(v, tl.dtype):
        return {DTYPE_KEY: v.name}
    return str(v)


def _constexpr_names(fn) -> set[str]:
    names = set()
    for name, p in inspect.signature(fn).parameters.items():
        ann = p.annotation
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", "")
        if text.split(".")[-1] == "constexpr":
            names.add(name)
    return names


def _type_of(value: Any) -> tuple[str, Any]:
    """(signature type, constexpr value or None) as Triton specialises the argument."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and hasattr(value, "data_ptr"):
        return "*" + _DTYPES.get(str(dtype).removeprefix("torch."), str(dtype)), None
    if isinstance(value, bool):
        return "i1", None
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1  # Triton specialises an int equal to 1 into a constant
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), None
    if isinstance(value, float):
        return "fp32", None
    if value is None:
        return "constexpr", None
    return "constexpr", _jsonable(value)


def describe(fn, args: tuple, kwargs: dict) -> dict:
    """What compiling this launch of python function `fn` needs."""
    sig = inspect.signature(fn)
    params = list(sig.parameters)
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    for name, p in sig.parameters.items():
        if name not in bound and p.default is not inspect.Parameter.empty:
            bound[name] = p.default
    constexpr = _constexpr_names(fn)
    signature, constexprs = {}, {}
    for name in params:
        if name in constexpr:
            signature[name] = "constexpr"
            constexprs[name] = _jsonable(bound.get(name))
        else:
            ty, const = _type_of(bound.get(name))
            signature[name] = ty
            if ty == "constexpr":
                constexprs[name] = const
    options = {k: kwargs[k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if kwargs.get(k) is not None}
    return {
        "module": fn.__module__,
        "file": inspect.getsourcefile(fn),
        "name": fn.__name__,
        "signature": signature,
        "constexprs": constexprs,
        "options": options,
    }


def _serial_grid_dependency_control() -> None:
    """The audit captures as SGLang launches on SM120, where its kernels take programmatic dependent
    launch (`USE_GDC`, `gdc_wait`). The interpreter has no lowering for those two instructions, but it
    runs one kernel at a time, after the previous one: there they order nothing, so no-ops are exact
    (and the variant compiled for sm_120a keeps them)."""
    import triton.language.extra.cuda as cuda_extra

    def gdc_wait(*args, **kwargs) -> None:
        return None

    def gdc_launch_dependents(*args, **kwargs) -> None:
        return None

    cuda_extra.gdc_wait = gdc_wait
    cuda_extra.gdc_launch_dependents = gdc_launch_dependents


def install(path: str) -> None:
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    kinds = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:
        pass
    if os.environ.get("TRITON_INTERPRET") == "1":
        _serial_grid_dependency_control()
    lock = threading.Lock()

    def write(record: dict) -> None:
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    for cls in kinds:
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            try:
                record = describe(self.fn, args, {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")})
                configs = getattr(_local, "configs", None)
                if configs is not None:
                    tuned = set().union(*(c.kwargs for c in configs))
                    # the chosen config's values are not the launch's own constants
                    record["constexprs"] = {k: v for k, v in record["constexprs"].items() if k not in tuned}
                    record["options"] = {}
                    record["configs"] = [
                        {"kwargs": {k: _jsonable(v) for k, v in c.kwargs.items()}, "num_warps": c.num_warps,
                         "num_stages": c.num_stages, "num_ctas": getattr(c, "num_ctas", 1),
                         "maxnreg": getattr(c, "maxnreg", None)}
                        for c in configs
                    ]  # fmt: skip
                if not kwargs.get("warmup"):
                    write(record)
            except Exception as exc:  # capture must never change what the kernel does
                write({"error": f"capture failed: {type(exc).__name__}: {exc}"})
            return _original(self, *args, **kwargs)

        cls.run = run

    tuner_run = Autotuner.run

    def autotuner_run(self, *args, **kwargs):
        _local.configs = getattr(self, ALL_CONFIGS, None) or list(self.configs)
        try:
            return tuner_run(self, *args, **kwargs)
        finally:
            _local.configs = None

    Autotuner.run = autotuner_run


def install_from_env() -> None:
    if capturing():
        install(os.environ[ENV])

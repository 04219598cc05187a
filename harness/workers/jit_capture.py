"""Recording the JIT CUDA modules a path builds through SGLang's `load_jit`, and every call of their
entry points, for the SM120 audit: no GPU needed, no kernel runs.

SGLang's own `load_jit` runs up to the point where it has its build description (the `build.ninja`
text it would compile: nvcc, the flags, the include paths, the generated wrapper with the template
arguments); instead of building, the description is recorded and the path gets a module whose
functions record their arguments (a tensor by shape, strides and dtype). The JIT target is set to
compute capability 12.0 first, so the template arguments and flags are those of an SM120 host
(`is_arch_support_pdl()`, `-DSGL_CUDA_ARCH=1200`, SGLang's own `sm_120` target suffix).

Installed in a worker beside harness/workers/triton_capture.py when `SM120_HARNESS_CAPTURE` names a file;
one JSON object per module build and per call, `"kind": "cuda"`."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from harness.workers.sglang_src import import_module, sglang_root
from harness.workers.triton_capture import ENV

SM120_CAPABILITY = (12, 0)
AS_SM120 = "SM120_HARNESS_CAPTURE_AS_SM120"  # set for a CUDA path captured on a machine without a GPU
_lock = threading.Lock()
_keep = []  # the arch override stays entered for the worker's life


def describe_arg(v: Any) -> Any:
    """A call argument as the replay rebuilds it: a tensor by its layout, a scalar as itself."""
    if hasattr(v, "data_ptr") and hasattr(v, "shape"):
        return {
            "tensor": {
                "shape": list(v.shape),
                "strides": list(v.stride()),
                "dtype": str(v.dtype).removeprefix("torch."),
            }
        }
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot record a JIT call argument of type {type(v).__name__}")


class RecordingModule:
    """What a path gets instead of the built module: each entry point records its call."""

    def __init__(self, name: str, write) -> None:
        self._name, self._write = name, write

    def __getattr__(self, function: str):
        if function.startswith("__"):
            raise AttributeError(function)

        def call(*args):
            self._write(
                {
                    "kind": "cuda_call",
                    "module": self._name,
                    "function": function,
                    "args": [describe_arg(a) for a in args],
                }
            )

        return call


def _sm120_arch() -> None:
    """SGLang's JIT reads the architecture it builds for (and whether it launches with PDL) from here."""
    if _keep:
        return
    override = import_module("sglang.kernels.jit.utils.arch").override_jit_cuda_arch(*SM120_CAPABILITY)
    override.__enter__()
    _keep.append(override)


def sm120_choices() -> None:
    """For the rest of this process, SGLang chooses as on an SM120 host: the JIT architecture, and
    `is_sm120_supported()` (which picks TileLang pass configs and block sizes) true."""
    _sm120_arch()
    common = import_module("sglang.srt.utils.common")
    utils = import_module("sglang.srt.utils")
    common.is_sm120_supported = utils.is_sm120_supported = lambda *a, **k: True
    # An op SGLang wraps in register_custom_op goes through the dispatcher unless its tensors are on CUDA,
    # and is registered for the platform's key only: without a GPU, ops registered from here on call
    # their body (which loads and calls the JIT module) directly
    custom_op = import_module("sglang.srt.utils.custom_op")
    if hasattr(custom_op, "_call_directly_in_eager"):
        custom_op._call_directly_in_eager = lambda op_func, op: op_func


def install(path: str) -> None:
    loader = import_module("sglang.kernels.jit.utils.compile.loader")
    ninja = import_module("sglang.kernels.jit.utils.compile.ninja")
    cache = import_module("sglang.kernels.jit.utils.compile.cache")

    if os.environ.get(AS_SM120):  # a path captured without a GPU: SGLang's SM120 choices (TileLang pass configs)
        sm120_choices()
    else:
        _sm120_arch()

    def write(record: dict) -> None:
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def build(*, spec, build_dir, build_file):
        units = [{"filename": u.filename, "source": u.source} for u in spec.translation_units()]
        write(
            {
                "kind": "cuda",
                "module": spec.module_name,
                "sources": list(spec.cuda_files + spec.cpp_files),
                "units": units,
                "build_file": build_file,
            }
        )
        return Path(build_dir) / f"{spec.module_name}.so"

    loader._find_prebuilt = lambda spec, scope: None  # always reach the build description
    loader._build_lock = lambda scope: contextlib.nullcontext()
    cache.commit_build = lambda *a, **k: None
    ninja.build = build
    loader._load = lambda library: RecordingModule(Path(library).stem, write)


def install_from_env() -> None:
    if os.environ.get(ENV) and sglang_root() is not None:  # without SGLang there is no JIT to capture
        try:
            install(os.environ[ENV])
        except Exception as exc:  # SGLang without the JIT internals patched here: said, and the path still runs
            with open(os.environ[ENV], "a", encoding="utf-8") as f:
                f.write(json.dumps({"error": f"JIT capture not installed: {type(exc).__name__}: {exc}"}) + "\n")

"""Finding SGLang's sources without importing SGLang: modules that need only torch and triton are
loaded by file path, the rest are imported inside the worker that runs them.

Where SGLang lives: `$SM120_HARNESS_SGLANG_SRC` (a folder that holds `sglang/`, e.g. a checkout's
`python/`), else the installed `sglang` distribution."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from harness.environment import drop_orphans, missing_module
from harness.op import Unavailable

ENV = "SM120_HARNESS_SGLANG_SRC"


def sglang_root() -> Path | None:
    """The folder that holds the `sglang` package, or None."""
    src = os.environ.get(ENV)
    if src:
        if not (Path(src) / "sglang" / "__init__.py").is_file():
            raise Unavailable(f"{ENV}={src}: no sglang/__init__.py there")
        return Path(src).resolve()
    spec = importlib.util.find_spec("sglang")  # finds the top-level package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def require_root() -> Path:
    root = sglang_root()
    if root is None:
        raise Unavailable(f"sglang is not installed (pip install --no-deps sglang==0.5.23, or set {ENV})")
    return root


def load_by_path(relpath: str) -> ModuleType:
    """Load `sglang/<relpath>` as a standalone module (it must import only torch, triton and stdlib)."""
    file = require_root() / "sglang" / relpath
    if not file.is_file():
        raise Unavailable(f"{file} does not exist in this SGLang version")
    name = "_sm120_harness_sglang_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_module(dotted: str) -> ModuleType:
    """A regular import of an SGLang module (the whole `import sglang` chain), from the chosen root."""
    root = require_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    before = set(sys.modules)
    try:
        return importlib.import_module(dotted)
    except Exception as exc:
        drop_orphans(before)
        missing = missing_module(exc)
        if missing:
            raise Unavailable(f"{missing} (importing {dotted})") from exc
        raise

"""Finding SGLang's sources without importing SGLang: modules that need only torch and triton are
loaded by file path, the rest are imported inside the worker that runs them.

Where SGLang lives: `$SM120_HARNESS_SGLANG_SRC` (a folder that holds `sglang/`, e.g. a checkout's
`python/`), else the installed `sglang` distribution."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

from harness.workers.environment import Absent, Unavailable, drop_orphans, missing_module

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


def generated(field: str) -> str | None:
    """A field of the sources' generated sglang/_version.py (`__version__`, `__commit_id__`), read
    as text: importing sglang runs its whole package __init__."""
    try:
        root = sglang_root()
    except Unavailable:
        return None
    file = root / "sglang" / "_version.py" if root else None
    if file is None or not file.is_file():
        return None
    m = re.search(rf"^{field}\s*=\s*(?:\w+\s*=\s*)?['\"]([^'\"]+)['\"]", file.read_text(), re.MULTILINE)
    return m.group(1) if m else None


def require_root() -> Path:
    root = sglang_root()
    if root is None:
        raise Unavailable(f"sglang is not installed (pip install --no-deps sglang==0.5.23, or set {ENV})")
    return root


def load_by_path(relpath: str, edit: tuple[str, str] | None = None) -> ModuleType:
    """Load `sglang/<relpath>` as a standalone module (it must import only torch, triton, stdlib and what is
    already importable). With `edit` = (old, new): a copy of the file with that one edit, under a name of its
    own (a planted fault); `old` must occur exactly once, else ValueError (another SGLang version?)."""
    file = require_root() / "sglang" / relpath
    if not file.is_file():
        raise Absent(f"sglang/{relpath} not in SGLang {generated('__version__') or '(version unknown)'}")
    name = "_sm120_harness_sglang_" + relpath.replace("/", "_").removesuffix(".py")
    if edit is not None:
        old, new = edit
        text = file.read_text(encoding="utf-8")
        if text.count(old) != 1:
            raise ValueError(f"{file}: {old!r} occurs {text.count(old)} times, not once")
        name += "_edited_" + hashlib.sha1(f"{old}\0{new}".encode()).hexdigest()[:10]
        file = Path(tempfile.mkdtemp(prefix="sm120-harness-edited-")) / file.name
        file.write_text(text.replace(old, new), encoding="utf-8")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with _importing(f"sglang/{relpath}"):
        spec.loader.exec_module(module)
    return module


on_import: Callable[[str | None], None] | None = None  # told what is being imported, then None


@contextlib.contextmanager
def _importing(what: str) -> Iterator[None]:
    """A worker that dies inside SGLang's import chain (a segfault in an extension's init, an exit at
    module level) then says what it was importing: that commit cannot run here, which is not a result."""
    if on_import is None:
        yield
        return
    on_import(what)
    try:
        yield
    finally:
        on_import(None)


class _Absent:
    """A name of sgl_kernel on a host without it: attributes give more absent names, a call raises
    Unavailable naming what was called (so the path is recorded as skipped for that reason)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, name: str) -> _Absent:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs):
        SGL_KERNEL_CALLS.append(self._name)
        raise Unavailable(f"calls {self._name}, and sgl_kernel is not installed")

    def __repr__(self) -> str:
        return f"<{self._name}: sgl_kernel is not installed>"


class _SglKernelStandIn(types.ModuleType):
    def __getattr__(self, name: str) -> _Absent:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self.__name__}.{name}")


class _SglKernelFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "sgl_kernel" or fullname.startswith("sgl_kernel."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _SglKernelStandIn(spec.name)

    def exec_module(self, module) -> None:
        module.__path__ = []


# names of the stand-in that were called (SGLang may catch the error and fall back): kept for the record
SGL_KERNEL_CALLS: list[str] = []


def stand_in_sgl_kernel() -> bool:
    """On CUDA, SGLang imports `sgl_kernel` at module level throughout its import chain (quantization
    schemes, GGUF, the fused MoE), also in modules whose fallbacks never call it. Where sgl_kernel is
    not installed (its wheels are built for one torch), a stand-in lets those modules load; whatever of
    it is called raises Unavailable. True when the stand-in is (now) in place."""
    if any(isinstance(f, _SglKernelFinder) for f in sys.meta_path):
        return True
    if "sgl_kernel" in sys.modules or importlib.util.find_spec("sgl_kernel") is not None:
        return False
    sys.meta_path.append(_SglKernelFinder())
    return True


def import_module(dotted: str) -> ModuleType:
    """A regular import of an SGLang module (the whole `import sglang` chain), from the chosen root.
    On a CUDA host without sgl_kernel, its stand-in is put in place first (see stand_in_sgl_kernel)."""
    root = require_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import torch

    if torch.cuda.is_available():
        stand_in_sgl_kernel()
    before = set(sys.modules)
    try:
        if dotted in sys.modules:
            return sys.modules[dotted]
        with _importing(dotted):
            return importlib.import_module(dotted)
    except Exception as exc:
        drop_orphans(before)
        missing = missing_module(exc)
        if missing:
            raise Unavailable(f"{missing} (importing {dotted})") from exc
        raise

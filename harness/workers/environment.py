"""Telling an environment problem in a path from a real error in it.

A module of the path's import chain that is not installed (`tilelang`, `openai`, a package its
fallback imports; `sgl_kernel` on CUDA has a stand-in, harness/workers/sglang_src.py) is the host's problem:
the path is `skipped(<module> not installed: ...)`, naming the module. A module that is missing from
a package that is installed (SGLang importing a file of its own that does not exist), and every other
exception, is the path's: `failed`.
An exception raised while an import of a missing module was being handled (Python's import machinery
losing a half-imported package, `KeyError: 'sglang'`) is the missing module's.

Two more outcomes are neither the kernel's failure nor a skip for want of a package:
- `absent(<module>.<name> not in SGLang <version>)`: the op file asked SGLang for a module or a name
  the SGLang measured does not have (not yet, or no longer, or moved): a loss of coverage, which compare
  and the gate report as such. Only the op file's own request counts: SGLang importing a file of its
  own that does not exist is SGLang's failure.
- an environment conflict: importing SGLang fails inside another installed package (an older SGLang
  registering a model config that a newer Transformers already has): `skipped(environment: ...)`."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path


class Unavailable(Exception):
    """Raised by a path that cannot run here (package missing, wrong GPU): recorded as skipped."""


class Absent(Exception):
    """Raised where a path's SGLang function is not in the SGLang measured: recorded as absent(<message>)."""


def _installed(top: str) -> bool:
    if top in sys.modules and sys.modules[top] is not None:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def missing_module(exc: BaseException) -> str | None:
    """`<module> not installed: <the error>` where `exc` is, or was raised while handling, an import of
    a module whose package is not installed; else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ModuleNotFoundError) and e.name and not _installed(e.name.split(".")[0]):
            how = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            return f"{e.name} not installed: {how}"
        e = e.__cause__ or e.__context__
    return None


def _innermost(exc: BaseException) -> str:
    """The file of the innermost frame of `exc` that is not the import machinery (Python's importlib and
    the harness's import helper): the code that asked for the module or the name."""
    here = str(Path(__file__).with_name("sglang_src.py"))
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    mine = [f for f in files if not f.startswith("<frozen importlib") and "/importlib/" not in f and f != here]
    return mine[-1] if mine else ""


def _in(file: str, root: Path | None, package: str = "sglang") -> bool:
    return root is not None and Path(file).resolve().is_relative_to(root / package)


def absent_from(exc: BaseException, root: Path | None, version: str | None) -> str | None:
    """`<module>[.<name>] not in SGLang <version>` where `exc` is the op file's request for an SGLang
    module or name that these sources lack; else None."""
    if root is None:
        return None
    what = None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("sglang."):
        what = exc.name
    elif isinstance(exc, ImportError) and (exc.name or "").startswith("sglang.") and "cannot import name" in str(exc):
        name = str(exc).split("'")[1] if str(exc).count("'") >= 2 else "?"
        what = f"{exc.name}.{name}"
    elif isinstance(exc, AttributeError) and getattr(getattr(exc, "obj", None), "__name__", "").startswith("sglang."):
        what = f"{exc.obj.__name__}.{exc.name}"
    if what is None or _in(_innermost(exc), root):
        return None
    return f"{what} not in SGLang {version or '(version unknown)'}"


def environment_conflict(exc: BaseException, root: Path | None) -> str | None:
    """`environment: ...` where importing SGLang failed inside another installed package (not SGLang,
    not the harness): the host's packages disagree with this SGLang; else None."""
    files = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    importing = any(f.startswith("<frozen importlib") for f in files)
    inner = _innermost(exc)
    if not importing or root is None or not any(_in(f, root) for f in files) or _in(inner, root):
        return None
    if "site-packages" not in inner and "dist-packages" not in inner:
        return None
    package = inner.split("-packages/", 1)[1].split("/", 1)[0]
    message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return f"environment: importing SGLang fails in {package}: {message}"


def drop_orphans(before: set[str]) -> None:
    """After a failed import: forget the modules it left behind whose package is no longer imported
    (Python removes a package whose __init__ failed, not the submodules it had imported), so the next
    import of the chain runs it again and meets the same error, not a half-imported package."""
    for name in set(sys.modules) - before:
        parts = name.split(".")
        if any(".".join(parts[:i]) not in sys.modules for i in range(1, len(parts))):
            sys.modules.pop(name, None)


@contextlib.contextmanager
def scoped_environ(set_: dict[str, str], drop: tuple[str, ...] = ()) -> Iterator[None]:
    """This process's environment with `set_` set and `drop` unset (what its workers inherit), restored
    after."""
    saved = {k: os.environ.get(k) for k in (*set_, *drop)}
    os.environ.update(set_)
    for k in drop:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

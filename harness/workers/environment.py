"""Telling an environment problem in a path from a real error in it.

A module of the path's import chain that is not installed (`tilelang`, `openai`, a package its
fallback imports; `sgl_kernel` on CUDA has a stand-in, harness/workers/sglang_src.py) is the host's problem:
the path is `skipped(<module> not installed: ...)`, naming the module. A module that is missing from
a package that is installed (SGLang importing a file of its own that does not exist), and every other
exception, is the path's: `failed`.
An exception raised while an import of a missing module was being handled (Python's import machinery
losing a half-imported package, `KeyError: 'sglang'`) is the missing module's."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator


class Unavailable(Exception):
    """Raised by a path that cannot run here (package missing, wrong GPU): recorded as skipped."""


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

"""The op API: the one module an op file in `kernels/` imports. What an op file declares is described in
harness/parity/contract.py; this module gives it that vocabulary and the helpers every op file would
otherwise write again, so that the engine's inside can move without touching `kernels/`.

    from harness.parity import op
    from harness.parity.op import ORACLE, Case, Metric, Path, Unavailable
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from pathlib import Path as FilePath
from types import ModuleType
from typing import Any

from harness.parity import deepgemm, dsv4
from harness.parity.catalogue import load_module
from harness.parity.contract import Case, Known, Path, Tensors
from harness.parity.drift import Metric, calc_diff, ids_mismatch, worst_row_calc_diff
from harness.parity.guard import STRAY, Allocations, Guarded, guarded, guarded_allocations
from harness.results.metrics import ORACLE
from harness.workers.environment import Absent, Unavailable
from harness.workers.interpreter import as_cuda, as_on_a_gpu, plain
from harness.workers.sglang_src import generated, import_module, load_by_path, require_root
from harness.workers.triton_capture import capturing, keep_first_config, pinned_config

__all__ = [
    "ORACLE", "SM90", "SM100", "SM120", "STRAY", "Allocations", "Case", "Guarded", "Known", "Metric", "Path",
    "Tensors", "Unavailable", "as_cuda", "as_on_a_gpu", "plain", "guarded", "guarded_allocations", "pinned_config",
    "calc_diff", "case_maker", "capturing", "deepgemm", "dsv4", "function", "ids_mismatch", "import_module",
    "interpreted",
    "keep_first_config", "load_by_path", "load_module", "require", "require_root", "sibling", "worst_row_calc_diff",
]  # fmt: skip

# exact compute capabilities, as Path.archs takes them: (12, 0) is not "at least (10, 0)"
SM90 = ((9, 0),)
SM100 = ((10, 0), (10, 3))
SM120 = ((12, 0), (12, 1))  # RTX PRO 6000 / RTX 50xx (12.0) and DGX Spark (12.1)


def case_maker(**defaults: Any) -> Callable[..., Case]:
    """The op file's case constructor, `case(name, tags, **params)`: its parameters over `defaults`. A
    parameter the defaults do not name is taken as given (a case of its own kind)."""

    def case(name: str, tags: Iterable[str] = (), **params: Any) -> Case:
        return Case(name, {**defaults, **params}, frozenset(tags))

    return case


def interpreted() -> bool:
    """Triton kernels run under its interpreter here (no GPU): a path adjusts what the interpreter
    cannot do as a GPU would (one autotune config, no device-name lookups)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require(module: str, why: str = "") -> ModuleType:
    """Import `module`; where its package is not installed, raise Unavailable naming it (the path is
    skipped with that reason). An installed package that fails to import is judged as every other error
    of a path's import chain is (harness/workers/environment.py): skipped where what is missing is not
    installed, else failed."""
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise Unavailable(f"{top} is not installed ({why or f'No module named {top!r}'})")
    return importlib.import_module(module)


def sibling(this_file: str, stem: str) -> ModuleType:
    """Another op file of the same folder (`sibling(__file__, "mhc_sinkhorn")`), to reuse its inputs
    or its oracle."""
    return load_module(FilePath(this_file).resolve().parent / f"{stem}.py")


def function(*places: str) -> Any:
    """The SGLang function (or class, or method: `module:Class.method`; or the module itself: `module:`)
    at the first of `places` these sources have. Where SGLang moved a function between versions, the op
    file names every place it has lived, newest first; where none of them is here, Absent names them
    all (the path is recorded `absent(...)`, a loss of coverage, not a failure)."""
    for place in places:
        module, _, qualname = place.partition(":")
        try:
            found: Any = import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                continue  # this module is not in these sources: try the next place
            raise  # the module is here and fails to import: that is the path's failure
        for part in qualname.split(".") if qualname else ():
            found = getattr(found, part, None)
            if found is None:
                break
        if found is not None:
            return found
    raise Absent(f"{' or '.join(places)}: not in SGLang {generated('__version__') or '(version unknown)'}")

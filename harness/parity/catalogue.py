"""Discovery of op files by path (asv-style): each `kernels/*.py` is loaded under a private module
name, because `kernels` is also the import name of a package SGLang depends on."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import ModuleType

from harness.parity.contract import DTYPE_NAMES, Case, Known
from harness.parity.contract import Path as OpPath
from harness.results.ceilings import CALC_DIFF, default_ceilings
from harness.results.metrics import ORACLE

REQUIRED = ("OP", "DTYPE", "PRIMARY", "TOLERANCE", "cases", "make_inputs", "PATHS")


class CatalogueError(Exception):
    """An op file that does not follow the contract in harness/parity/contract.py."""


@dataclass
class Op:
    name: str
    file: Path
    module: ModuleType

    @property
    def dtype(self) -> str:
        return self.module.DTYPE

    @property
    def primary(self) -> str | None:
        return self.module.PRIMARY

    @property
    def ceilings(self) -> dict[str, float]:
        """The DTYPE's default ceilings with the op's own over them."""
        return {**default_ceilings(self.dtype), **getattr(self.module, "CEILINGS", {})}

    def metrics(self, outputs, oracle, inputs, case) -> list:
        fn = getattr(self.module, "metrics", None)
        return fn(outputs, oracle, inputs, case) if fn else []

    @property
    def tolerance(self) -> tuple[float, float]:
        return tuple(self.module.TOLERANCE)

    @property
    def paths(self) -> dict[str, OpPath]:
        return {p.name: p for p in self.module.PATHS}

    @property
    def goldens(self) -> dict[str, OpPath]:
        return {n: p for n, p in self.paths.items() if p.golden}

    @property
    def impls(self) -> dict[str, OpPath]:
        return {n: p for n, p in self.paths.items() if not p.golden}

    @property
    def known(self) -> list[dict[str, str]]:
        """Its known findings, as a run stores them (contract.Known.resolved)."""
        return [k.resolved(self.name) for k in getattr(self.module, "KNOWN", [])]

    def cases(self) -> dict[str, Case]:
        return {c.name: c for c in self.module.cases()}

    def valid_region(self, inputs, case):
        fn = getattr(self.module, "valid_region", None)
        return fn(inputs, case) if fn else {}


def load_module(file: Path | str) -> ModuleType:
    """A Python file loaded by path under a private module name, once per process: `kernels` is also the
    import name of a package SGLang depends on."""
    file = Path(file).resolve()
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    name = f"_sm120_harness_op_{file.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise CatalogueError(f"{file}: cannot be loaded as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free reflection need it registered
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_op_file(file: Path) -> Op:
    file = Path(file).resolve()
    try:
        module = load_module(file)
    except CatalogueError:
        raise
    except Exception as exc:
        raise CatalogueError(f"{file}: failed to import: {type(exc).__name__}: {exc}") from exc
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise CatalogueError(f"{file}: missing {', '.join(missing)} (see harness/parity/contract.py)")
    names = [p.name for p in module.PATHS]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CatalogueError(f"{file}: PATHS: duplicate names {dupes}")
    if module.DTYPE not in CALC_DIFF:
        raise CatalogueError(f"{file}: DTYPE {module.DTYPE!r} is not one of {', '.join(CALC_DIFF)}")
    if module.PRIMARY is None and not hasattr(module, "metrics"):
        raise CatalogueError(f"{file}: PRIMARY is None but there is no metrics() to compare the outputs")
    covers = getattr(module, "COVERS", {})
    if not isinstance(covers, dict) or not all(
        isinstance(k, str) and ":" in k and isinstance(v, str) for k, v in covers.items()
    ):
        raise CatalogueError(f"{file}: COVERS must be a dict of 'sglang.module:qualname' -> what it leaves out ('')")
    if not isinstance(getattr(module, "CEILINGS", {}), dict):
        raise CatalogueError(f"{file}: CEILINGS must be a dict of metric -> limit")
    if not any(p.golden and p.name == ORACLE for p in module.PATHS):
        raise CatalogueError(f"{file}: PATHS: no golden named {ORACLE!r} (the fp64 oracle)")
    case_names = [c.name for c in module.cases()]
    if len(set(case_names)) != len(case_names):
        raise CatalogueError(f"{file}: cases(): duplicate case names")
    _check_known(file, getattr(module, "KNOWN", []), names, case_names)
    outputs = getattr(module, "OUTPUTS", {})
    if not isinstance(outputs, dict) or not all(v in DTYPE_NAMES for v in outputs.values()):
        raise CatalogueError(
            f"{file}: OUTPUTS must be a dict of output name -> torch dtype name, one of {', '.join(DTYPE_NAMES)}"
        )
    unjudged = getattr(module, "UNJUDGED", {})
    if not isinstance(unjudged, dict) or not all(isinstance(v, str) and v.strip() for v in unjudged.values()):
        raise CatalogueError(f"{file}: UNJUDGED must be a dict of metric -> why no limit applies")
    return Op(name=module.OP, file=file, module=module)


def _check_known(file: Path, known: object, paths: list[str], cases: list[str]) -> None:
    """An entry names a path of the op, a case pattern some case matches, and a date: a stale entry (its
    case or path gone) is an error, not an allowance for whatever comes next under that name."""
    if not isinstance(known, list) or not all(isinstance(k, Known) for k in known):
        raise CatalogueError(f"{file}: KNOWN must be a list of op.Known(path, case, metric, until, why)")
    for i, k in enumerate(known):
        where = f"{file}: KNOWN[{i}]"
        if k.path not in paths:
            raise CatalogueError(f"{where}.path: {k.path!r} is not one of PATHS ({', '.join(paths)})")
        if not any(fnmatch.fnmatchcase(c, k.case) for c in cases):
            raise CatalogueError(f"{where}.case: {k.case!r} matches no case of the op")
        try:
            date.fromisoformat(k.until)
        except (TypeError, ValueError) as exc:
            raise CatalogueError(f"{where}.until: expected an ISO date (YYYY-MM-DD), got {k.until!r}") from exc
        if not k.why.strip():
            raise CatalogueError(f"{where}.why: say what is wrong and where it is tracked")


def discover(kernels_dir: Path) -> dict[str, Op]:
    kernels_dir = Path(kernels_dir)
    if not kernels_dir.is_dir():
        raise CatalogueError(f"{kernels_dir}: not a folder of op files")
    ops: dict[str, Op] = {}
    for file in sorted(kernels_dir.glob("*.py")):
        if file.name.startswith("_"):
            continue
        op = load_op_file(file)
        if op.name in ops:
            raise CatalogueError(f"{file}: OP {op.name!r} is also declared by {ops[op.name].file}")
        ops[op.name] = op
    return ops


@dataclass
class Selection:
    """What the profile asks of one op, resolved against the op file."""

    op: Op
    cases: list[Case]
    goldens: list[str]  # the oracle first
    impls: list[str]
    ceilings: dict[str, float]
    tolerance: tuple[float, float]
    listed_goldens: list[str] | None = None  # as the profile names them (what `golden capture` stores)

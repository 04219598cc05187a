"""Coverage, measured rather than assumed: the forward-path inventory of an SGLang version (content beside
the catalogue, `kernels/inventory/sglang-<version>.toml`: the kernel groups DeepSeek-V4 and V4.1 run on
SM120, each with the SGLang functions that make it) against what the op files declare they cover
(`COVERS`), and against the SGLang being measured (a listed function that is not in its sources).

An op file declares
    COVERS = {"sglang.module:qualname": ""}            the function, fully
    COVERS = {"sglang.module:qualname": "H 64/32 only"} in part: what its cases leave out
A group is `covered` when every one of its functions is covered fully, `partial` when some are covered
(or covered in part), `not` when none is. A function is looked for in SGLang's sources (parsed, never
imported: importing SGLang reads knobs and may touch a GPU)."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from harness.parity.catalogue import Op

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COVERED, PARTIAL, NOT = "covered", "partial", "not"
KINDS = ("triton", "jit_cuda", "tilelang", "flashinfer", "deepgemm", "cublas", "torch")


class InventoryError(Exception):
    """An inventory file that does not follow the format above: the message names the file and field."""


@dataclass(frozen=True)
class Group:
    row: int
    name: str
    kinds: tuple[str, ...]
    models: tuple[str, ...]
    selected_on_sm120: str
    functions: tuple[str, ...]  # module:qualname: what runs, the kernels and the functions that launch them
    selectors: tuple[str, ...] = ()  # module:qualname: the predicates that send SM120 down this path
    unresolved: tuple[str, ...] = ()
    note: str = ""


@dataclass
class GroupCoverage:
    group: Group
    status: str  # COVERED, PARTIAL, NOT
    by: dict[str, list[str]] = field(default_factory=dict)  # function -> the ops covering it
    limits: dict[str, str] = field(default_factory=dict)  # function -> what its cases leave out
    absent: list[str] = field(default_factory=list)  # listed functions and selectors not in the SGLang measured


def inventory_file(folder: Path, version: str | None) -> Path | None:
    """The inventory of SGLang `version` (`sglang-<version>.toml`), else None."""
    if not version:
        return None
    f = Path(folder) / f"sglang-{version}.toml"
    return f if f.is_file() else None


def load_inventory(file: Path) -> list[Group]:
    try:
        data = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{file}: cannot be read: {exc}") from exc
    groups = []
    for i, g in enumerate(data.get("group", [])):
        where = f"{file}: group[{i}]"
        if not isinstance(g, dict):
            raise InventoryError(f"{where}: expected a table")
        for key, kind in (("row", int), ("name", str), ("functions", list)):
            if not isinstance(g.get(key), kind):
                raise InventoryError(f"{where}.{key}: expected {kind.__name__}, got {g.get(key)!r}")
        bad = [k for k in g.get("kinds", []) if k not in KINDS]
        if bad:
            raise InventoryError(f"{where}.kinds: {bad} not among {', '.join(KINDS)}")
        for key in ("functions", "selectors"):
            malformed = [f for f in g.get(key, []) if not isinstance(f, str) or ":" not in f]
            if malformed:
                raise InventoryError(f"{where}.{key}: expected 'module:qualname', got {malformed}")
        groups.append(
            Group(
                row=g["row"],
                name=g["name"],
                kinds=tuple(g.get("kinds", [])),
                models=tuple(g.get("models", [])),
                selected_on_sm120=str(g.get("selected_on_sm120", "")),
                functions=tuple(g["functions"]),
                selectors=tuple(g.get("selectors", [])),
                unresolved=tuple(str(u) for u in g.get("unresolved", [])),
                note=str(g.get("note", "")),
            )
        )
    if not groups:
        raise InventoryError(f"{file}: no [[group]]")
    return groups


def declared(ops: dict[str, Op]) -> dict[str, dict[str, str]]:
    """function -> {op: what it leaves out ("" for nothing)}, from every op file's COVERS."""
    out: dict[str, dict[str, str]] = {}
    for name, op in ops.items():
        covers = getattr(op.module, "COVERS", {})
        for fn, limit in covers.items():
            out.setdefault(fn, {})[name] = limit
    return out


@cache
def _definitions(source: Path) -> frozenset[str]:
    """Every top-level function and class of a module, and each class's methods (Class.method)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            methods = (m.name for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)))
            names.update(f"{node.name}.{m}" for m in methods)
        if isinstance(node, (ast.Assign, ast.AnnAssign)):  # a kernel made by a factory, an alias
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(names)


def exists(root: Path, function: str) -> bool:
    """Whether `module:qualname` is defined in the SGLang sources under `root` (the folder that holds
    `sglang/`)."""
    module, _, qualname = function.partition(":")
    base = Path(root, *module.split("."))
    for source in (base.with_suffix(".py"), base / "__init__.py"):
        if source.is_file():
            try:
                return qualname in _definitions(source)
            except (SyntaxError, UnicodeDecodeError, OSError):
                return False
    return False


def measure(groups: list[Group], ops: dict[str, Op], sglang_root: Path | None) -> list[GroupCoverage]:
    """Each group's coverage by the op files, and the listed functions the SGLang measured lacks."""
    covers = declared(ops)
    out = []
    for g in groups:
        by = {fn: sorted(covers[fn]) for fn in g.functions if fn in covers}
        limits = {fn: "; ".join(v for v in covers[fn].values() if v) for fn in by}
        full = [fn for fn in by if not limits[fn]]
        status = COVERED if len(full) == len(g.functions) else PARTIAL if by else NOT
        listed = (*g.functions, *g.selectors)
        absent = [fn for fn in listed if sglang_root is not None and not exists(sglang_root, fn)]
        out.append(GroupCoverage(g, status, by, {k: v for k, v in limits.items() if v}, absent))
    return out


def unknown(groups: list[Group], ops: dict[str, Op]) -> dict[str, list[str]]:
    """Functions op files say they cover that no group of the inventory lists: op -> functions (a
    misspelling, or a kernel the inventory should know)."""
    listed = {fn for g in groups for fn in g.functions}
    out: dict[str, list[str]] = {}
    for name, op in ops.items():
        extra = sorted(set(getattr(op.module, "COVERS", {})) - listed)
        if extra:
            out[name] = extra
    return out

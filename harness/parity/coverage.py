"""Coverage, measured rather than assumed: the forward-path inventory of an SGLang version (content beside
the catalogue, `kernels/inventory/sglang-<version>.toml`: the kernel groups DeepSeek-V4 and V4.1 run on
SM120, each with the SGLang functions that make it) against what the op files declare they cover
(`COVERS`), and against the SGLang being measured (a listed function that is not in its sources).

An op file declares
    COVERS = {"sglang.module:qualname": ""}            the function, fully
    COVERS = {"sglang.module:qualname": "H 64/32 only"} in part: what its cases leave out
A group is `covered` when every one of its functions is covered fully, `partial` when some are covered
(or covered in part), `not` when none is. A function is looked for in SGLang's sources (parsed, never
imported: importing SGLang reads knobs and may touch a GPU).

Two more tables of the inventory keep it honest as SGLang moves (tools/record_inventory.py writes them):
    [sources]   "module:qualname" = the sha256 (16 hex) of the function's source when the inventory was
                read: a function whose source differs in the SGLang measured is `changed` (its op file's
                cases were written against the old code)
    [registry]  the kernel registry's specs eligible on compute capability 12.0 that no group lists:
                `outside` (not on DeepSeek-V4's path) and `unplaced` (named in its sources, to place).
                A spec eligible on 12.0 that the inventory does not know is reported, as is a listed one
                the registry no longer has."""

from __future__ import annotations

import ast
import hashlib
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from harness.parity.catalogue import Op
from harness.results import metrics as M
from harness.results.store import row

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COVERED, PARTIAL, NOT = "covered", "partial", "not"
KINDS = ("triton", "jit_cuda", "tilelang", "flashinfer", "deepgemm", "cublas", "torch", "sgl_kernel")


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
    changed: list[str] = field(default_factory=list)  # listed functions whose source differs from [sources]
    registry_ids: dict[str, list[str]] = field(default_factory=dict)  # function -> the registry's op ids for it


@dataclass(frozen=True)
class Inventory:
    file: Path
    groups: list[Group]
    sources: dict[str, str]  # module:qualname -> sha256[:16] of its source when the inventory was read
    outside: frozenset[str]  # registry op ids eligible on 12.0 and not on DeepSeek-V4's path
    unplaced: frozenset[str]  # registry op ids named in DeepSeek-V4's sources, in no group yet


@dataclass(frozen=True)
class RegistryCheck:
    unknown: list[dict]  # eligible specs that neither a group nor [registry] knows
    gone: list[str]  # op ids [registry] lists that the registry no longer has
    unplaced: list[str]  # op ids still to place in a group
    eligible: int  # specs eligible on 12.0
    total: int


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in v.replace("rc", ".").split("."))


def inventory_file(folder: Path, version: str | None) -> Path | None:
    """The inventory of SGLang `version` (`sglang-<version>.toml`); where there is none, the newest one
    the folder has (its functions then read against the SGLang measured: what moved shows as absent or
    changed); None where the folder has none."""
    files = {f.stem.removeprefix("sglang-"): f for f in Path(folder).glob("sglang-*.toml")}
    if version in files:
        return files[version]
    return files[max(files, key=_version_key)] if files else None


def load_inventory(file: Path) -> Inventory:
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
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise InventoryError(f"{file}: sources: expected a table of 'module:qualname' = 'sha256'")
    reg = data.get("registry", {})
    lists = {}
    for key in ("outside", "unplaced"):
        value = reg.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InventoryError(f"{file}: registry.{key}: expected a list of op ids")
        lists[key] = frozenset(value)
    return Inventory(Path(file), groups, dict(sources), lists["outside"], lists["unplaced"])


def declared(ops: dict[str, Op]) -> dict[str, dict[str, str]]:
    """function -> {op: what it leaves out ("" for nothing)}, from every op file's COVERS."""
    out: dict[str, dict[str, str]] = {}
    for name, op in ops.items():
        covers = getattr(op.module, "COVERS", {})
        for fn, limit in covers.items():
            out.setdefault(fn, {})[name] = limit
    return out


@cache
def _nodes(source: Path) -> dict[str, ast.AST]:
    """Every top-level function and class of a module, each class's methods (Class.method), and names
    assigned at top level (a kernel made by a factory, an alias): name -> its node."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names[f"{node.name}.{m.name}"] = m
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update((t.id, node) for t in targets if isinstance(t, ast.Name))
    return names


def _module_file(root: Path, module: str) -> Path | None:
    base = Path(root, *module.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def source_hash(root: Path, function: str) -> str | None:
    """sha256 (16 hex) of `module:qualname`'s source text in the SGLang under `root` (its decorators
    included), or None where it is not there."""
    module, _, qualname = function.partition(":")
    file = _module_file(root, module)
    try:
        node = _nodes(file).get(qualname) if file else None
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None
    if node is None:
        return None
    lines = file.read_text(encoding="utf-8").splitlines()
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    text = "\n".join(lines[first - 1 : node.end_lineno])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def exists(root: Path, function: str) -> bool:
    """Whether `module:qualname` is defined in the SGLang sources under `root` (the folder that holds
    `sglang/`)."""
    module, _, qualname = function.partition(":")
    file = _module_file(root, module)
    try:
        return file is not None and qualname in _nodes(file)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False


def measure(
    inv: Inventory, ops: dict[str, Op], sglang_root: Path | None, registry: list[dict] | None = None
) -> list[GroupCoverage]:
    """Each group's coverage by the op files, the listed functions the SGLang measured lacks, those whose
    source changed since the inventory was read, and the registry's op ids of each covered function."""
    covers = declared(ops)
    ids: dict[str, list[str]] = {}
    for spec in registry or []:
        ids.setdefault(spec["target"], []).append(spec["op"])
    out = []
    for g in inv.groups:
        by = {fn: sorted(covers[fn]) for fn in g.functions if fn in covers}
        limits = {fn: "; ".join(v for v in covers[fn].values() if v) for fn in by}
        full = [fn for fn in by if not limits[fn]]
        status = COVERED if len(full) == len(g.functions) else PARTIAL if by else NOT
        listed = (*g.functions, *g.selectors)
        absent = [fn for fn in listed if sglang_root is not None and not exists(sglang_root, fn)]
        changed = []
        if sglang_root is not None:
            changed = [
                fn
                for fn in g.functions
                if fn not in absent and fn in inv.sources and source_hash(sglang_root, fn) != inv.sources[fn]
            ]
        reg = {fn: sorted(set(ids[fn])) for fn in g.functions if fn in ids}
        out.append(GroupCoverage(g, status, by, {k: v for k, v in limits.items() if v}, absent, changed, reg))
    return out


def check_registry(inv: Inventory, registry: list[dict]) -> RegistryCheck:
    """The registry's specs eligible on 12.0 against what the inventory knows of them."""
    listed = {fn for g in inv.groups for fn in g.functions}
    eligible = [s for s in registry if s["eligible"]]
    known = inv.outside | inv.unplaced
    unknown = [s for s in eligible if s["target"] not in listed and s["op"] not in known]
    have = {s["op"] for s in registry}
    return RegistryCheck(
        unknown=sorted(unknown, key=lambda s: (s["op"], s["backend"])),
        gone=sorted(known - have),
        unplaced=sorted(inv.unplaced & have),
        eligible=len(eligible),
        total=len(registry),
    )


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


SUITE = "coverage"


def rows(run_id: str, inv: Inventory, groups: list[GroupCoverage], selected: set[str]) -> list[dict]:
    """A run's coverage rows (suite "coverage"), one per kernel group: the share of its functions the op
    files cover, its status, and which covering ops this run selected (the site follows coverage per
    SGLang commit; the run page says what is not covered)."""
    out = []
    for c in groups:
        g = c.group
        ops = sorted({op for names in c.by.values() for op in names})
        version = hashlib.sha256(repr((g.name, g.functions)).encode()).hexdigest()[:12]
        detail = {
            "group": g.name,
            "status": c.status,
            "kinds": list(g.kinds),
            "models": list(g.models),
            "ops": ops,
            "ran": sorted(set(ops) & selected),
            "left_out": c.limits,
            "not_covered": [fn for fn in g.functions if fn not in c.by],
            "absent": c.absent,
            "changed": c.changed,
            "inventory": inv.file.name,
        }
        share = len(c.by) / len(g.functions) if g.functions else 0.0
        out.append(row(run_id, SUITE, f"group{g.row:02d}", version, "catalogue", M.COVERAGE, share, unit="share",
                       better="higher", detail=detail))  # fmt: skip
    return out

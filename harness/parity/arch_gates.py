"""Where SGLang's DeepSeek-V4 path chooses by compute capability, and what it chooses on SM120.

The files read are those of the inventory's functions and selectors (kernels/inventory/), plus the model
files and the start-up hook that set DeepSeek-V4's flags. In them, every capability test is found by its
syntax (a platform fact `get_platform().is_blackwell`, a probe `is_sm100_supported()`, a comparison of
`get_device_capability()` or of a `major`/`cap` name, or a call of a module-local gate function whose own
body holds one) and evaluated as (9,0), (10,0), (12,0) and (12,1) would: the facts and probes through
SGLang's own definitions (`sglang.srt.utils.common`, with the device capability answered), comparisons by
substitution, gate functions by calling them under the same answer.

A site is reported
  - `as_sm100` where SM120 enters a branch SM100 enters and SM90 does not: the class the seed PR fixed by hand
    (`is_blackwell_supported()` where `is_sm100_supported()` was meant): each needs a look at what the branch
    runs (tcgen05/TMEM kernels do not exist on SM120);
  - `sm121_differs` where (12,0) and (12,1) answer differently (sglang#39482: SM121 got FP32 scales);
  - `raises` where a branch SM120 may take by this test raises (the test's other conditions unknown).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

TIMEOUT_S = 300
CAPS = {"sm90": (9, 0), "sm100": (10, 0), "sm120": (12, 0), "sm121": (12, 1)}
# beyond the inventory's modules: the model and the hook that sets DeepSeek-V4's flags per device
EXTRA_MODULES = (
    "sglang.srt.models.deepseek_v4",
    "sglang.srt.models.deepseek_v4_mhc",
    "sglang.srt.arg_groups.model_hook",
    "sglang.srt.layers.attention.deepseek_v4_backend",
)
_CAP_NAMES = {"major", "minor", "cap", "capability", "device_capability", "sm", "device_sm", "arch"}
_UNKNOWN = object()


@dataclass
class Site:
    file: str  # relative to the sglang package's parent
    line: int
    function: str
    atom: str  # the capability test, as written
    statement: str  # the condition or statement it sits in (first line)
    values: dict[str, Any]  # cap name -> True/False/number, or None where it could not be evaluated
    flags: list[str] = field(default_factory=list)


def modules_of(inventory) -> list[str]:
    """The modules of the inventory's functions and selectors, and EXTRA_MODULES."""
    names = set(EXTRA_MODULES)
    for group in inventory.groups:
        for ref in [*group.functions, *group.selectors]:
            names.add(ref.partition(":")[0])
    return sorted(names)


@contextlib.contextmanager
def _device(cap: tuple[int, int]) -> Iterator[None]:
    """SGLang's probes and torch answer as a CUDA device of capability `cap` would."""
    import torch

    common = importlib.import_module("sglang.srt.utils.common")
    with contextlib.ExitStack() as stack:
        for target, value in (
            (torch.cuda, {"get_device_capability": lambda *a, **k: cap, "is_available": lambda: True}),
            (torch.version, {"cuda": "13.0", "hip": None}),
            (common, {"get_device_sm": lambda: cap[0] * 10 + cap[1], "is_cuda": lambda: True, "is_hip": lambda: False}),
        ):
            for name, v in value.items():
                stack.enter_context(mock.patch.object(target, name, v))
        yield


@contextlib.contextmanager
def _cuda_module(module: Any) -> Iterator[None]:
    """The module's own copies of SGLang's device flags (imported by name at its import) answer CUDA too."""
    flags = {"is_cuda": lambda: True, "_is_cuda": True, "is_hip": lambda: False, "_is_hip": False}
    with contextlib.ExitStack() as stack:
        for name, value in flags.items():
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, value))
        yield


def _probe(fact: str, cap: tuple[int, int]) -> Any:
    """A platform fact (`is_blackwell`) or probe name (`is_sm100_supported`), answered for `cap`."""
    common = importlib.import_module("sglang.srt.utils.common")
    ctx = importlib.import_module("sglang.srt.runtime_context")
    name = getattr(ctx, "_PLATFORM_PROBES", {}).get(fact) or getattr(ctx, "_PLATFORM_VALUES", {}).get(fact) or fact
    fn = getattr(common, name, None)
    if fn is None:
        return _UNKNOWN
    with _device(cap):
        return getattr(fn, "__wrapped__", fn)()


def _substitute(node: ast.AST, cap: tuple[int, int]) -> Any:
    """Evaluate a comparison over capability names and get_device_capability() calls, or _UNKNOWN."""
    major, minor = cap
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Tuple):
        vals = [_substitute(e, cap) for e in node.elts]
        return _UNKNOWN if _UNKNOWN in vals else tuple(vals)
    if isinstance(node, ast.Call) and _called(node) in ("get_device_capability", "get_device_sm"):
        return cap if _called(node) == "get_device_capability" else major * 10 + minor
    if isinstance(node, ast.Subscript):
        base = _substitute(node.value, cap)
        index = node.slice
        if isinstance(base, tuple) and isinstance(index, ast.Constant) and isinstance(index.value, int):
            return base[index.value]
        return _UNKNOWN
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        name = name.lstrip("_").lower()
        if name in ("major", "cap_major", "sm_major"):
            return major
        if name in ("minor", "cap_minor"):
            return minor
        if name in ("cap", "capability", "device_capability"):
            return cap
        if name in ("sm", "device_sm", "arch"):
            return major * 10 + minor
        return _UNKNOWN
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add, ast.FloorDiv)):
        a, b = _substitute(node.left, cap), _substitute(node.right, cap)
        if _UNKNOWN in (a, b):
            return _UNKNOWN
        return {ast.Mult: a * b, ast.Add: a + b}.get(type(node.op), a // b if b else _UNKNOWN)
    if isinstance(node, ast.Compare):
        left = _substitute(node.left, cap)
        for op, right_node in zip(node.ops, node.comparators):
            right = _substitute(right_node, cap)
            if _UNKNOWN in (left, right):
                return _UNKNOWN
            ok = {
                ast.Eq: lambda a, b: a == b,
                ast.NotEq: lambda a, b: a != b,
                ast.Gt: lambda a, b: a > b,
                ast.GtE: lambda a, b: a >= b,
                ast.Lt: lambda a, b: a < b,
                ast.LtE: lambda a, b: a <= b,
                ast.In: lambda a, b: a in b,
                ast.NotIn: lambda a, b: a not in b,
            }.get(type(op))
            if ok is None or not ok(left, right):
                return False if ok is not None else _UNKNOWN
            left = right
        return True
    return _UNKNOWN


def _called(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _mentions_capability(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and _called(n) in ("get_device_capability", "get_device_sm"):
            return True
        if isinstance(n, ast.Name) and n.id.lstrip("_").lower() in _CAP_NAMES:
            return True
    return False


class _Scan(ast.NodeVisitor):
    def __init__(self, module: Any, source: str, probes: set[str], facts: set[str]) -> None:
        self.module, self.source, self.probes, self.facts = module, source, probes, facts
        self.atoms: list[tuple[ast.AST, str, str, Any]] = []  # node, function, kind, what to evaluate
        self.stack: list[str] = []
        self.gate_functions = self._gate_functions()

    def _gate_functions(self) -> set[str]:
        """Module-level functions without required arguments whose body tests the capability."""
        found = set()
        for node in ast.parse(self.source).body:
            if isinstance(node, ast.FunctionDef) and not node.args.args:
                for n in ast.walk(node):
                    if (isinstance(n, ast.Compare) and _mentions_capability(n)) or (
                        isinstance(n, ast.Call) and _called(n) in self.probes
                    ):
                        found.add(node.name)
                        break
        return found

    def _scoped(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _add(self, node: ast.AST, kind: str, what: Any) -> None:
        self.atoms.append((node, ".".join(self.stack) or "<module>", kind, what))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in self.facts and isinstance(node.value, ast.Call) and _called(node.value) == "get_platform":
            self._add(node, "fact", node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _called(node)
        if name in self.probes and not node.args:
            self._add(node, "probe", name)
        elif name in self.gate_functions and not node.args and (not self.stack or self.stack[-1] != name):
            self._add(node, "gate", name)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if _mentions_capability(node):
            self._add(node, "compare", node)
            return  # its parts are the same test
        self.generic_visit(node)


def _statement_of(tree: ast.AST, target: ast.AST, source: str) -> tuple[str, ast.AST | None]:
    """The first line of the condition or statement that holds `target`, and the If it tests (if any)."""
    best, best_if = None, None
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if child is target or any(n is target for n in ast.walk(child)):
                if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Return, ast.Assign, ast.AnnAssign, ast.Assert)):
                    best = node
                    best_if = (
                        node if isinstance(node, ast.If) and any(n is target for n in ast.walk(node.test)) else None
                    )
    if best is None:
        return ast.get_source_segment(source, target) or "", None
    segment = ast.get_source_segment(source, best.test if isinstance(best, (ast.If, ast.While)) else best) or ""
    return " ".join(segment.split())[:160], best_if


def _truth(test: ast.AST, atom: ast.AST, value: Any) -> bool | None:
    """The test's truth with the atom answered and everything else unknown (None): three-valued logic."""
    if test is atom:
        return bool(value)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        t = _truth(test.operand, atom, value)
        return None if t is None else not t
    if isinstance(test, ast.BoolOp):
        parts = [_truth(v, atom, value) for v in test.values]
        if isinstance(test.op, ast.And):
            return False if False in parts else True if all(p is True for p in parts) else None
        return True if True in parts else False if all(p is False for p in parts) else None
    return None


def _raises_when(node: ast.If, atom: ast.AST, value: Any, following: list[ast.stmt]) -> bool:
    """Whether a branch of this If that the atom's answer leaves possible raises, or, past an early exit it
    may leave untaken, a statement that `following` holds."""
    t = _truth(node.test, atom, value)

    def raises(stmts: list[ast.stmt]) -> bool:
        return any(isinstance(n, ast.Raise) for stmt in stmts for n in ast.walk(stmt))

    if (t is not False and raises(node.body)) or (t is not True and raises(node.orelse)):
        return True
    # an early exit (`if not is_sm100_or_newer() or ...: return`) that the atom's answer may leave untaken:
    # the statements after it in the same block run, and one of them raises
    exits = node.body and isinstance(node.body[-1], (ast.Return, ast.Raise)) and not node.orelse
    return bool(exits and t is not True and raises(following))


def _following(tree: ast.AST, node: ast.stmt) -> list[ast.stmt]:
    """The statements after `node` in the block that holds it."""
    for parent in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(parent, name, None)
            if isinstance(block, list) and any(b is node for b in block):
                return block[[i for i, b in enumerate(block) if b is node][0] + 1 :]
    return []


def scan(modules: list[str]) -> tuple[list[Site], list[str]]:
    """Every capability test in `modules` (import names), evaluated; and the modules that could not be read."""
    ctx = importlib.import_module("sglang.srt.runtime_context")
    facts = {
        f
        for f in (*getattr(ctx, "_PLATFORM_PROBES", {}), *getattr(ctx, "_PLATFORM_VALUES", {}))
        if f.startswith(("is_sm", "is_blackwell", "is_hopper", "device_"))
    }
    common = importlib.import_module("sglang.srt.utils.common")
    probes = {
        n for n in dir(common) if n.startswith(("is_sm", "is_blackwell", "is_hopper")) and callable(getattr(common, n))
    }
    root = Path(importlib.import_module("sglang").__file__).resolve().parents[1]
    sites, unread = [], []
    for name in modules:
        try:
            module = importlib.import_module(name)
            file = Path(module.__file__)
            source = file.read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - a module that does not import here is reported, not fatal
            unread.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
            continue
        tree = ast.parse(source)
        s = _Scan(module, source, probes, facts)
        s.visit(tree)
        for node, function, kind, what in s.atoms:
            values = {}
            for cap_name, cap in CAPS.items():
                try:
                    if kind == "fact":
                        v = _probe(what, cap)
                    elif kind == "probe":
                        v = _probe(what, cap)
                    elif kind == "gate":
                        fn = getattr(module, what)
                        with _device(cap), _cuda_module(module):
                            v = getattr(fn, "__wrapped__", fn)()
                    else:
                        v = _substitute(what, cap)
                except Exception:  # noqa: BLE001 - a test that needs more than a device to answer
                    v = _UNKNOWN
                values[cap_name] = None if v is _UNKNOWN else v
            statement, if_node = _statement_of(tree, node, source)
            resolved = file.resolve()
            site = Site(
                file=str(resolved.relative_to(root)) if resolved.is_relative_to(root) else f"{name}.py",
                line=node.lineno,
                function=function,
                atom=" ".join((ast.get_source_segment(source, node) or what).split())[:120],
                statement=statement,
                values=values,
            )
            v90, v100, v120, v121 = (values[k] for k in CAPS)
            if None not in (v100, v120, v90) and v100 and v120 == v100 and v100 != v90:
                site.flags.append("as_sm100")
            if None not in (v120, v121) and v120 != v121:
                site.flags.append("sm121_differs")
            if (
                if_node is not None
                and v120 is not None
                and _raises_when(if_node, node, v120, _following(tree, if_node))
            ):
                site.flags.append("raises")
            sites.append(site)
    return sites, unread


def table(sites: list[Site], flagged_only: bool = False) -> str:
    """One line per site: where, the test, its answer per capability, the flags."""
    rows = [s for s in sites if s.flags or not flagged_only]

    def show(v: Any) -> str:
        return "?" if v is None else ("T" if v is True else "F" if v is False else str(v))

    lines = [f"{'where':58} {'sm90 sm100 sm120 sm121':23} {'flags':26} test"]
    for s in rows:
        vals = " ".join(f"{show(s.values[k]):>5}" for k in CAPS)
        lines.append(
            f"{s.file + ':' + str(s.line):58} {vals:23} {','.join(s.flags) or '-':26} {s.atom}   [{s.function}]"
        )
    counts = {f: sum(f in s.flags for s in sites) for f in ("as_sm100", "sm121_differs", "raises")}
    lines.append(
        f"{len(sites)} capability tests; "
        + ", ".join(f"{n} {f}" for f, n in counts.items())
        + f"; {sum(None in s.values.values() for s in sites)} not evaluated"
    )
    return "\n".join(lines)


class ArchGateError(Exception):
    pass


def read(root: Path, modules: list[str], extra_path: Path | None = None) -> tuple[list[Site], list[str]]:
    """`scan` of the SGLang sources under `root` (and modules under `extra_path`), in a process of its own:
    it imports SGLang's modules."""
    paths = [str(root), *([str(extra_path)] if extra_path else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "harness.parity.arch_gates", *modules]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ArchGateError(f"reading SGLang's capability tests took over {TIMEOUT_S} s") from exc
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-1:])[:300]
        raise ArchGateError(f"reading SGLang's capability tests failed (exit {r.returncode}): {tail}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return [Site(**s) for s in out["sites"]], out["unread"]


if __name__ == "__main__":
    found, not_read = scan(sys.argv[1:])
    print(json.dumps({"sites": [dataclasses.asdict(s) for s in found], "unread": not_read}, default=str))

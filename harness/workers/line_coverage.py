"""Which lines of SGLang's Triton kernels the catalogue executes. Under Triton's interpreter (the CPU runs) a
kernel's body runs as Python, so coverage.py sees each of its lines as it executes.

A worker started with SM120_HARNESS_LINE_COVERAGE=<folder> records the lines it executes in SGLang's sources
there (harness/parity/child.py starts and saves it); `measure` combines what the workers recorded and
reports, per SGLang file that defines a Triton kernel the catalogue reached, each kernel's statements and
which of them ran. A kernel line never executed is a branch (a mask, a tail, a dtype, a flag) no case of
the catalogue reaches on the CPU; on a GPU the same kernels run compiled and are not traced."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

ENV = "SM120_HARNESS_LINE_COVERAGE"


def start() -> Any | None:
    """Start recording in this worker where ENV names a folder (coverage.py and SGLang's sources
    present); else None."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    import coverage

    from harness.workers.sglang_src import sglang_root

    root = sglang_root()
    if root is None:
        return None
    cov = coverage.Coverage(
        data_file=str(Path(folder) / "lines"), data_suffix=True, include=[f"{root / 'sglang'}/*"], config_file=False
    )
    cov.start()
    return cov


def save(cov: Any | None) -> None:
    if cov is not None:
        cov.stop()
        cov.save()


def _is_triton_jit(decorator: ast.expr, bare_jit: bool) -> bool:
    """@triton.jit or @triton.jit(...); a bare @jit where the module imports it from triton (TileLang's
    @tilelang.jit kernels are lowered, not interpreted)."""
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = ast.unparse(node)
    return name == "triton.jit" or (bare_jit and name == "jit")


def kernel_statements(source: str) -> dict[str, set[int]]:
    """Each Triton kernel of a module (a function decorated with triton.jit): the first line of every
    statement of its body (what coverage.py reports a statement executed by)."""
    out = {}
    tree = ast.parse(source)
    bare_jit = any(
        isinstance(n, ast.ImportFrom) and n.module == "triton" and any(a.name == "jit" for a in n.names)
        for n in ast.walk(tree)
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(_is_triton_jit(d, bare_jit) for d in node.decorator_list):
            lines = {n.lineno for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.stmt)}
            # a docstring is not executed as a statement
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(node.body) > 1:
                lines.discard(first.lineno)
            out[node.name] = lines
    return out


def measure(folder: Path, root: Path) -> list[dict]:
    """Per SGLang file with a Triton kernel whose lines the workers executed: every kernel of the file,
    its statements and the ones executed."""
    import coverage

    cov = coverage.Coverage(data_file=str(Path(folder) / "lines"), config_file=False)
    cov.combine(data_paths=[str(folder)], keep=True)
    data = cov.get_data()
    out = []
    for file in sorted(data.measured_files()):
        executed = set(data.lines(file) or ())
        try:
            kernels = kernel_statements(Path(file).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        reached = {k: s for k, s in kernels.items() if s & executed}
        if not reached:
            continue
        out.append(
            {
                "file": str(Path(file).resolve().relative_to(root)),
                "kernels": {
                    k: {"statements": len(s), "executed": len(s & executed), "missed": sorted(s - executed)}
                    for k, s in sorted(kernels.items())
                },
            }
        )
    return out

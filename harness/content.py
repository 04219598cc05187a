"""Where the content folders (kernels/, suites/, reports/) are: the working directory's, a source
checkout's, or the copy that travels inside the installed wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def content_dir(name: str) -> Path:
    for candidate in (Path.cwd() / name, _PKG.parent / name, _PKG / "content" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no {name}/ folder in {Path.cwd()} nor in the installed harness")

"""Secrets never leave the process: the values of arguments and variables that carry credentials
(`--api-key X`, `*_TOKEN`, `*_KEY`, `*_SECRET`, `Authorization: ...`, passwords in URLs, and what a profile
marks secret) are replaced by `***` in everything a run writes: run.json, its rows, its logs and artifacts,
and so its pages and Markdown.

Two passes: by shape (a flag or a name that says it carries a secret, a URL with a password), and by value
(each secret value known to the run, wherever it appears, e.g. in the server's own log of its arguments)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HIDDEN = "***"
# names that carry a credential: *_TOKEN, *_KEY, *_SECRET, passwords, Authorization (not max_tokens, not key)
SECRET_NAME = re.compile(
    r"api[_-]?key|secret|passw(or)?d|credential|(^|[_-])(token|auth|authorization|pwd)$|[_-]key$", re.IGNORECASE
)
URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)", re.IGNORECASE)
AUTH_HEADER = re.compile(r"\b(authorization\s*[:=]\s*)(\"?)(?:bearer\s+|basic\s+)?[^\s\"',}]+", re.IGNORECASE)
_MIN_VALUE = 4  # shorter values (a "1", "on") would blank out unrelated text


def secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name.lstrip("-").replace("-", "_")))


def secret_values(
    args: Iterable[str] = (), env: Mapping[str, str] | None = None, marked: Iterable[str] = ()
) -> set[str]:
    """The values `args` and `env` carry that are secret: after a secret-looking flag (`--api-key X`,
    `--api-key=X`), of a secret-looking variable, or of a flag or variable the profile marks secret."""
    marked = set(marked)
    values: set[str] = set()
    args = list(args)
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if a.startswith("-") and (secret_name(name) or name in marked):
            if eq:
                values.add(value)
            elif i + 1 < len(args):
                values.add(args[i + 1])
    for k, v in (env or {}).items():
        if secret_name(k) or k in marked:
            values.add(v)
    for a in [*args, *(env or {}).values()]:
        values.update(m.group(2) for m in URL_PASSWORD.finditer(a))
    return {v for v in values if len(v) >= _MIN_VALUE}


def redact_args(args: list[str], marked: Iterable[str] = ()) -> list[str]:
    """A command line with the values of secret flags and NAME=VALUE pairs hidden."""
    marked = set(marked)
    out, hide_next = [], False
    for a in args:
        name, eq, _ = a.partition("=")
        if hide_next:
            out.append(HIDDEN)
            hide_next = False
        elif eq and (secret_name(name) or name in marked):
            out.append(f"{name}={HIDDEN}")
        elif a.startswith("-") and (secret_name(a) or a in marked):
            out.append(a)
            hide_next = True
        else:
            out.append(a)
    return out


def redact_text(text: str, values: Iterable[str] = ()) -> str:
    for v in sorted(set(values), key=len, reverse=True):
        text = text.replace(v, HIDDEN)
    text = URL_PASSWORD.sub(rf"\1{HIDDEN}\3", text)
    return AUTH_HEADER.sub(rf"\1\2{HIDDEN}", text)


def redact(obj: Any, values: Iterable[str] = ()) -> Any:
    """`obj` (a manifest, a row) with secrets hidden: a secret-looking key's value, a secret flag's value
    in a list, and every known secret value or URL password in a string."""
    values = set(values)
    if isinstance(obj, Mapping):
        return {k: HIDDEN if isinstance(k, str) and secret_name(k) and v else redact(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = redact_args(list(obj)) if all(isinstance(x, str) for x in obj) else list(obj)
        return [redact(x, values) for x in items]
    if isinstance(obj, str):
        return redact_text(obj, values)
    return obj


def redact_files(folder: Path, values: Iterable[str]) -> None:
    """Every text file below `folder` (logs, samples, JSON) with the known secret values hidden."""
    values = set(values)
    for f in folder.rglob("*"):
        if not f.is_file() or f.suffix in (".parquet", ".png", ".safetensors"):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        clean = redact_text(text, values)
        if clean != text:
            f.write_text(clean, encoding="utf-8")

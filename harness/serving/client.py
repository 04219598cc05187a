"""A client of the server (lm-eval, few_shot_gsm8k, run_eval, bench_serving) run as a process of its
own under a deadline: the profile's `[accuracy] timeout_s` per evaluation, `[perf] timeout_s` per point
and repeat.

Its stdout and stderr go straight to its log in the run (unbuffered), so what it printed before a
stall is on disk; past the deadline it is killed and the unit ends `timeout` (ClientTimeout), the log
kept. An interrupted harness (^C, SIGTERM) kills it too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class ClientTimeout(Exception):
    """The client did not finish within its deadline and was killed; its log holds what it printed."""


def run(
    cmd: list[str], *, name: str, log: Path, timeout_s: float, cwd: Path | None = None, env: dict | None = None
) -> tuple[int, str]:
    """Run `cmd` to its end or its deadline; (exit status, everything it printed). The log starts with
    `$ <cmd>`; a killed client's log ends with a line saying so."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if cwd is not None:
        cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        start = f.tell()
        proc = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            f.write(f"\n(killed after {timeout_s:g} s: no end within the profile's timeout_s)\n".encode())
            f.flush()
            raise ClientTimeout(
                f"{name} did not finish within {timeout_s:g} s and was killed (a stalled server?); "
                f"its log {log} ends:\n{tail(_read(log, start))}"
            ) from None
        except BaseException:  # ^C, SIGTERM: the client must not outlive the unit
            proc.kill()
            proc.wait()
            raise
    return code, _read(log, start)


def _read(log: Path, start: int) -> str:
    with open(log, "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace")


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])

"""The SGLang server of a run: launched from the profile (or attached to by URL), ready when
/health_generate answers, described by its /server_info and /model_info, and torn down whole.

A launched server runs in its own process group, bound to 127.0.0.1, its output in the run's
`artifacts/server.log`; teardown signals the whole group (SGLang's scheduler and detokenizer are
children), so nothing outlives the run. The server also gets a parent-death signal: a harness that
is killed outright does not leave a GPU-holding server behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness.results.redaction import redact_args


class ServerError(Exception):
    """The server could not be started, reached or kept: an infrastructure failure (exit 3)."""


class ServerConfigError(ServerError):
    """A bad URL or server section: a usage error (exit 2)."""


@dataclass
class ServerConfig:
    model: str | None = None  # --model-path of sglang.launch_server
    args: list[str] = field(default_factory=list)  # the rest of its flags
    env: dict[str, str] = field(default_factory=dict)  # e.g. SGLANG_SM120_FLASHMLA_BACKEND
    command: list[str] | None = None  # a whole command instead ({port} and {python} are filled in)
    port: int = 30000  # 0: any free port
    ready_timeout_s: float = 1800.0  # loading DeepSeek-V4-Flash and capturing CUDA graphs takes minutes
    url: str | None = None  # attach to a running server instead of launching one
    secret: list[str] = field(default_factory=list)  # flags and variables whose values are secret


def check_url(url: str) -> str:
    """`http(s)://host:port` with no path, normalised; a ServerConfigError naming what is wrong."""
    p = urllib.parse.urlsplit(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ServerConfigError(f"--server-url {url!r}: expected http://HOST:PORT")
    try:
        _ = p.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise ServerConfigError(f"--server-url {url!r}: {exc}") from exc
    if p.path not in ("", "/") or p.query:
        raise ServerConfigError(f"--server-url {url!r}: give the server's base URL, without a path")
    return f"{p.scheme}://{p.netloc}"


def get_json(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _answers(url: str, timeout: float) -> int | None:
    """HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """One server for all serving suites of a run. Use as a context manager."""

    def __init__(self, cfg: ServerConfig, artifacts: Path):
        self.cfg, self.artifacts = cfg, Path(artifacts)
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = self.artifacts / "server.log"
        self.info: dict = {}

    # -------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Server:
        try:
            if self.cfg.url:
                self._attach()
            else:
                self._launch()
            self._describe()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self, port: int) -> list[str]:
        c = self.cfg
        if c.command:
            return [a.replace("{port}", str(port)).replace("{python}", sys.executable) for a in c.command]
        if not c.model:
            raise ServerConfigError("[server]: needs `model` (or `command`, or --server-url to attach)")
        base = [sys.executable, "-m", "sglang.launch_server", "--model-path", c.model]
        return [*base, "--host", "127.0.0.1", "--port", str(port), *c.args]

    def _launch(self) -> None:
        port = self.cfg.port or free_port()
        if not _port_free(port):
            raise ServerError(f"port {port} on 127.0.0.1 is in use: stop what holds it or set [server].port")
        cmd = self.command(port)
        self.url = f"http://127.0.0.1:{port}"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"$ {' '.join(redact_args(cmd, self.cfg.secret))}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.cfg.env},
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(self.cfg.ready_timeout_s)

    def _attach(self) -> None:
        self.url = check_url(self.cfg.url)
        if _answers(f"{self.url}/v1/models", timeout=10) is None:
            raise ServerError(f"nothing answers at {self.url} (is the server running, and is the URL right?)")
        self._wait_ready(min(self.cfg.ready_timeout_s, 300.0))

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready when /health_generate answers 200: the model has produced a token, not merely loaded."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"the server exited with code {self.proc.returncode} before it was ready; "
                    f"its log ({self.log}) ends:\n{self.log_tail()}"
                )
            if _answers(f"{self.url}/health_generate", timeout=30) == 200:
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the server at {self.url} was not ready within {timeout_s:.0f} s "
                    f"(/health_generate never answered 200); its log ends:\n{self.log_tail()}"
                )
            time.sleep(1.0)

    def _describe(self) -> None:
        """/server_info and /model_info into the run: they hold the resolved flags and the version."""
        for name in ("server_info", "model_info"):
            try:
                blob = get_json(f"{self.url}/{name}")
            except (urllib.error.URLError, OSError, ValueError) as exc:
                blob = {"error": f"GET /{name}: {exc}"}
            (self.artifacts / f"{name}.json").write_text(json.dumps(blob, indent=2, default=str))
            self.info[name] = blob
        try:
            models = get_json(f"{self.url}/v1/models").get("data") or []
        except (urllib.error.URLError, OSError, ValueError):
            models = []
        self.model_name = models[0]["id"] if models else self.info["model_info"].get("served_model_name", "default")

    def manifest(self) -> dict:
        si, mi = self.info.get("server_info", {}), self.info.get("model_info", {})
        return {
            "url": self.url,
            "launched": self.proc is not None,
            "command": self.command(int(self.url.rsplit(":", 1)[1])) if self.proc is not None else None,
            "version": si.get("version"),
            "launch_command": si.get("launch_command"),
            "model_path": mi.get("model_path"),
            "served_model_name": getattr(self, "model_name", None),
            "env": self.cfg.env,
        }

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return _answers(f"{self.url}/v1/models", timeout=10) is not None

    def death_note(self) -> str:
        """Why the server is gone, with the end of its log, for rows marked failed after it died."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"the server exited with code {self.proc.returncode}; its log ends:\n{self.log_tail()}"
        return f"the server at {self.url} stopped answering"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 30 s; the group is signalled even when its leader
        has already exited, since SGLang's children may not have."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the leader's pid: it called setsid()
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                self.proc.poll()  # reaps the leader once it exits, so it does not linger as a zombie
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies of the group count as gone: only a reaped leader would make killpg fail
    return any(_pgid_of(pid) == pgid and not _zombie(pid) for pid in _pids())


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

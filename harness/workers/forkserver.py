"""A fork server for the workers: one process imports torch, Triton and the harness once, then forks a
worker per (op, path), so a worker starts in milliseconds instead of the seconds of those imports.

It also learns: each worker reports the modules it imported outside SGLang (transformers, scipy,
openai, ... pulled in by SGLang's import chain), and the server imports them before its next fork.
SGLang itself and the GPU libraries are never imported here: SGLang reads its knobs (`SGLANG_*`, a
path's `env`) at import, and a GPU library may initialise CUDA, which a forked child cannot inherit.

A worker whose environment differs from the server's in a variable read at start-up (anything but
`SGLANG_*`, `CUDA_VISIBLE_DEVICES` and the harness's own) is not forked but started as a fresh
interpreter, and so is every worker once the server is gone or has a thread besides its own.

    python -m harness.workers.forkserver FD PID      (FD: its end of a Unix socket pair; PID: the harness's)
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from pathlib import Path

PRELOAD = (
    "torch",
    "triton",
    "numpy",
    "safetensors.torch",
    "harness.workers.worker",
    "harness.parity.child",
    "harness.parity.inputs",
    "harness.parity.catalogue",
    "harness.parity.drift",
    "harness.parity.roofline",
    "harness.workers.triton_capture",
)
# never imported by the server: read knobs at import, or may touch the GPU
NEVER = (
    "sglang",
    "sgl_kernel",
    "flashinfer",
    "deep_gemm",
    "flash_mla",
    "tilelang",
    "tvm",
    "tvm_ffi",
    "kernels",
    "cuda",
    "cupy",
    "pynvml",
    "nvidia",
    "__main__",
    "_sm120_harness",
)
LATE = ("SGLANG_", "SM120_HARNESS_", "CUDA_VISIBLE_DEVICES")  # read after a worker has started
_MAX = 1 << 16


def learnable(name: str) -> bool:
    top = name.split(".", 1)[0]
    return not top.startswith(NEVER) and not name.startswith("_sm120")


def forkable(server_env: dict[str, str], env: dict[str, str]) -> bool:
    changed = {k for k in server_env.keys() | env.keys() if server_env.get(k) != env.get(k)}
    return all(k.startswith(LATE) for k in changed)


# ---------------------------------------------------------------------------------------------
# the harness side


class Forked:
    """A forked worker, with the part of subprocess.Popen's interface the worker code uses."""

    def __init__(self, pid: int, stdout, server: ForkServer):
        self.pid, self.stdout, self._server = pid, stdout, server
        self.returncode: int | None = None
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self.returncode

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()


class ForkServer:
    def __init__(self, env: dict[str, str], log: Path):
        self.env = dict(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as logf:
            self.proc = subprocess.Popen(
                # the harness's pid, to tell whose workers these are (`ps` shows them with these args)
                [sys.executable, "-m", "harness.workers.forkserver", str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()  # one request at a time
        self.replies: dict[int, dict] = {}
        self.children: dict[int, Forked] = {}
        self.early_exits: dict[int, int] = {}
        self.cond = threading.Condition()
        self.alive = True
        self.stopped: str | None = None  # why workers are no longer forked
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(_MAX)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            with self.cond:
                if "exit" in msg:
                    child = self.children.pop(msg["exit"], None)
                    if child is None:
                        self.early_exits[msg["exit"]] = msg["code"]
                    else:
                        child._exited(msg["code"])
                else:
                    self.replies[msg["id"]] = msg
                self.cond.notify_all()
        with self.cond:
            self.alive = False
            for child in self.children.values():  # the server is gone, and with it their exit codes
                child._exited(-signal.SIGKILL)
            self.children.clear()
            self.cond.notify_all()

    def _request(self, msg: dict, fds: list[int] = ()) -> dict | None:
        with self.lock, self.cond:
            if not self.alive:
                return None
            self.next_id += 1
            msg["id"] = self.next_id
            try:
                socket.send_fds(self.sock, [json.dumps(msg).encode()], list(fds))
            except OSError:
                return None
            while msg["id"] not in self.replies and self.alive:
                self.cond.wait()
            return self.replies.pop(msg["id"], None)

    def usable(self, env: dict[str, str]) -> bool:
        return self.alive and self.stopped is None and forkable(self.env, env)

    def stop(self, why: str) -> None:
        self.stopped = why
        print(f"sm120-harness: workers are started afresh from now on: {why}", file=sys.stderr, flush=True)

    def fork(self, entry: str, job_file: str, env: dict[str, str], log_fd: int) -> Forked | None:
        """A worker forked from the server, its stdout a pipe to us and its stderr `log_fd`; None when
        the server cannot fork (then start a fresh interpreter)."""
        r, w = os.pipe()
        try:
            reply = self._request({"op": "fork", "entry": entry, "job": job_file, "env": env}, [w, log_fd])
        finally:
            os.close(w)
        if reply is None or "pid" not in reply:
            os.close(r)
            return None
        child = Forked(reply["pid"], os.fdopen(r, "rb"), self)
        with self.cond:
            if reply["pid"] in self.early_exits:
                child._exited(self.early_exits.pop(reply["pid"]))
            elif self.alive:
                self.children[reply["pid"]] = child
            else:
                child._exited(-signal.SIGKILL)
        return child

    def learn(self, modules_file: str) -> None:
        """Have the server import what a worker imported; not waited for (the next fork is)."""
        with self.lock:
            try:
                self.sock.send(json.dumps({"op": "learn", "file": modules_file}).encode())
            except OSError:
                pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# the server side


def _import(names: list[str]) -> int:
    done = 0
    for name in names:
        if name in sys.modules or not learnable(name):
            continue
        try:
            importlib.import_module(name)
            done += 1
        except BaseException as exc:  # a module that cannot be imported alone is left to the workers
            print(f"forkserver: not preloading {name}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
    return done


def _child(sock: socket.socket, msg: dict, fds: list[int]) -> None:
    """In the forked child: become the worker."""
    code = 1
    try:
        sock.close()
        os.setsid()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(msg["env"])
        code = importlib.import_module(msg["entry"]).child(msg["job"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    _import(list(PRELOAD))
    children: set[int] = set()

    def reap() -> None:
        for pid in list(children):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                children.discard(pid)
                continue
            if got:
                children.discard(pid)
                sock.send(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode())

    try:
        while True:
            ready, _, _ = select.select([sock], [], [], 0.05)  # also how soon an exit is reported
            reap()
            if not ready:
                continue
            data, fds, _, _ = socket.recv_fds(sock, _MAX, 2)
            if not data:
                return 0
            msg = json.loads(data)
            if msg["op"] == "learn":
                try:
                    names = json.loads(Path(msg["file"]).read_text())
                    Path(msg["file"]).unlink(missing_ok=True)
                except (OSError, ValueError):
                    names = []
                _import(names)
                continue
            if threading.active_count() > 1:  # forking a threaded process can deadlock the child
                for f in fds:
                    os.close(f)
                sock.send(json.dumps({"id": msg["id"], "error": "the server has threads"}).encode())
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(sock, msg, fds)
            for f in fds:
                os.close(f)
            children.add(pid)
            sock.send(json.dumps({"id": msg["id"], "pid": pid}).encode())
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


if __name__ == "__main__":
    raise SystemExit(serve(int(sys.argv[1])))

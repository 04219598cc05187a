"""The one executor of units, for the kernel parity suite and the audit: units of work taken in order
from one queue by slots (a thread each, bound to a device), workers forked from one fork server, and one
cancel: ^C or SIGTERM stops every slot at once and kills their workers. What ran where, and for how long,
is kept for the run's schedule."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Generic, TypeVar

from harness.workers.forkserver import ForkServer
from harness.workers.worker import kill_all

U = TypeVar("U")


@dataclass
class Slots:
    """Where a run's units go: the device's compute capability (None: no GPU, Triton runs under its
    interpreter), CUDA_VISIBLE_DEVICES per concurrent worker ([None] on the CPU), a worker's time limit,
    and the run's cancel flag."""

    capability: tuple[int, int] | None
    devices: list[str | None]
    timeout_s: float
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Ran(Generic[U]):
    unit: U
    slot: str
    start_s: float  # from the executor's start
    seconds: float


class Executor(Generic[U]):
    """Run `units` in order over `devices` (one thread each) until the run is `cancelled`;
    `work(unit, device, forks)` runs one unit, `after(ran)` is called in its slot when it ends, unless the
    run was cancelled."""

    def __init__(
        self, cancelled: threading.Event, devices: Sequence[str | None], server_env: dict[str, str], log: Path
    ):
        self.cancelled, self.devices = cancelled, list(devices)
        self.server_env, self.log = server_env, log
        self.labels = [f"{i}:{'cpu' if d is None else 'cuda' + d}" for i, d in enumerate(self.devices)]
        self.busy = dict.fromkeys(self.labels, 0.0)
        self.ran: list[Ran[U]] = []
        self.makespan_s = 0.0

    def run(
        self,
        units: Sequence[U],
        work: Callable[[U, str | None, ForkServer | None], None],
        after: Callable[[Ran[U]], None] = lambda ran: None,
    ) -> list[Ran[U]]:
        cancelled = self.cancelled
        todo: Queue = Queue()
        for u in units:
            todo.put(u)
        t0 = time.perf_counter()
        try:
            forks = ForkServer(self.server_env, self.log)
        except OSError as exc:  # no fork server: every worker is a fresh interpreter, as it always could be
            print(f"sm120-harness: no fork server ({exc}); workers start afresh", file=sys.stderr, flush=True)
            forks = None

        def slot_loop(label: str, device: str | None) -> None:
            while not cancelled.is_set():
                try:
                    u = todo.get_nowait()
                except Empty:
                    return
                start = time.perf_counter()
                work(u, device, forks)
                ran = Ran(u, label, start - t0, time.perf_counter() - start)
                self.busy[label] += ran.seconds
                self.ran.append(ran)
                if not cancelled.is_set():
                    after(ran)

        pool = ThreadPoolExecutor(max(1, len(self.labels)))
        try:
            futures = [pool.submit(slot_loop, label, d) for label, d in zip(self.labels, self.devices)]
            while wait(futures, timeout=0.5).not_done:  # timed, so that ^C and SIGTERM get through
                pass
            for f in futures:
                f.result()
        except BaseException:  # ^C or SIGTERM in this thread: the slots stop at once, not after their units
            cancelled.set()
            kill_all()
            raise
        finally:
            if forks is not None:
                forks.close()  # its forked workers go with it
            pool.shutdown(wait=True)
            self.makespan_s = time.perf_counter() - t0
        return self.ran

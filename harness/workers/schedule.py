"""Which (op, path) work unit runs when, over the slots of a run (concurrent workers: one per GPU, or
several per device): longest first, by the seconds each unit took in the previous run of the same
profile on the same kind of machine, each unit on the first slot that is free. A unit the previous
run did not have is estimated from its case count (ESTIMATE_*), and the plan says which it was."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.results import metrics as M

ESTIMATE_STARTUP_S = 10.0  # a worker's imports and CUDA context, with no history to go by
ESTIMATE_CASE_S = 5.0  # per case: inputs, JIT, the call, the timing


@dataclass
class Unit:
    op: str
    path: str
    cases: int
    runs_worker: bool = True  # False: skipped here, or replayed from stored goldens
    estimate_s: float = 0.0
    estimate_from: str = ""  # "run <id>" or "estimate"


def previous_seconds(measurements: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(op, path) -> the seconds that unit took, from a run's wall_total_s rows."""
    m = measurements[(measurements["metric"] == M.WALL_TOTAL) & (measurements["suite"] == "kernels")]
    return {(c, i): float(v) for c, i, v in zip(m["case"], m["impl"], m["value"])}


def plan(units: list[Unit], previous: dict[tuple[str, str], float], previous_id: str | None, slots: int) -> list[Unit]:
    """The units with their estimates, longest first (ties in the order given); on one slot, where the
    order changes nothing, in the order given (an op's goldens, then its implementations)."""
    for u in units:
        if (u.op, u.path) in previous:
            u.estimate_s, u.estimate_from = previous[(u.op, u.path)], f"run {previous_id}"
        elif not u.runs_worker:
            u.estimate_s, u.estimate_from = 0.0, "no worker"
        else:
            u.estimate_s, u.estimate_from = ESTIMATE_STARTUP_S + ESTIMATE_CASE_S * u.cases, "estimate"
    if slots == 1:
        return list(units)
    order = sorted(range(len(units)), key=lambda i: (-units[i].estimate_s, i))
    return [units[i] for i in order]


def predicted_busy(units: list[Unit], slots: int) -> list[float]:
    """Each slot's seconds if every unit takes its estimate and goes to the first free slot."""
    busy = [0.0] * slots
    for u in units:
        busy[busy.index(min(busy))] += u.estimate_s
    return busy

"""A stored run judged alone: the rows past their limits, and the units that failed. The limits are
resolved by harness/limits.py.

    limits = {key: {metric: limit}}   key: an op, or a whole case (`gsm8k/run_eval`) with a limit of its own
"""

from __future__ import annotations

import pandas as pd

from harness.results import ceilings
from harness.results import metrics as M
from harness.results.store import FAILURES, Run

Limits = dict[str, dict[str, float]]


def breaches(run: Run, limits: Limits) -> pd.DataFrame:
    """The rows of `run` past `limits` (harness/limits.py resolves a run's)."""
    m = run.measurements
    if m.empty:
        return m.assign(ceiling=pd.Series(dtype=float))
    return ceilings.breaches(m, limits)


def broken(run: Run) -> pd.DataFrame:
    """The units that failed, crashed or timed out (a path x case, an evaluation, a sweep point, an
    audited kernel)."""
    m = run.measurements
    if m.empty:
        return m
    return m[m["status"].isin(FAILURES) & ((m["metric"] == M.OUTCOME) | (m["suite"] == "audit"))]

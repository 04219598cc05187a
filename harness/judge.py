"""What a run is judged against, resolved once: when it runs, every limit that applies to it (the
op's DTYPE defaults, the op's own CEILINGS, the profile's overrides, the SM120 audit's limits,
upstream's GSM8K floor) is written into its run.json, and every reader judges it with those: the run's
exit code, the terminal summary, its page, the site, the gate.

    limits = {key: {metric: limit}}   key: an op, or a whole case (`gsm8k/run_eval`) with a limit of its own
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import ceilings
from harness import metrics as M
from harness.store import FAILURES, Run

Limits = dict[str, dict[str, float]]


def resolve(profile, selections: list, *, audit: bool, serving: bool) -> Limits:
    """The limits of a run of `profile`: each selected op's, and the serving suites' floor."""
    from harness import audit as sm120_audit

    extra = sm120_audit.CEILINGS if audit else {}
    limits = {s.op.name: {**extra, **s.ceilings} for s in selections}
    if serving and profile.accuracy is not None and profile.accuracy.run_eval:
        limits["gsm8k/run_eval"] = {M.GSM8K_ACC: profile.accuracy.run_eval["floor"]}  # upstream's gate
    return limits


def _defaults(kernels_dir: Path | None) -> Limits:
    """For a run stored before its limits were: each op file's own (DTYPE defaults and CEILINGS) and
    the audit's. A profile's overrides are not known then."""
    from harness import audit as sm120_audit
    from harness.catalogue import CatalogueError, discover
    from harness.content import content_dir

    try:
        ops = discover(kernels_dir or content_dir("kernels"))
    except (CatalogueError, FileNotFoundError):
        return {}
    return {name: {**sm120_audit.CEILINGS, **op.ceilings} for name, op in ops.items()}


def limits(run: Run, kernels_dir: Path | None = None) -> Limits:
    """The limits stored with `run`, else the op files' (a run from before they were stored)."""
    stored = run.manifest.get("limits")
    return stored if isinstance(stored, dict) else _defaults(kernels_dir)


def breaches(run: Run, kernels_dir: Path | None = None, with_limits: Limits | None = None) -> pd.DataFrame:
    """The rows of `run` past their limits (its own, unless `with_limits` is given)."""
    m = run.measurements
    if m.empty:
        return m.assign(ceiling=pd.Series(dtype=float))
    return ceilings.breaches(m, with_limits if with_limits is not None else limits(run, kernels_dir))


def broken(run: Run) -> pd.DataFrame:
    """The units that failed, crashed or timed out (a path x case, an evaluation, a sweep point, an
    audited kernel)."""
    m = run.measurements
    if m.empty:
        return m
    return m[m["status"].isin(FAILURES) & ((m["metric"] == M.OUTCOME) | (m["suite"] == "audit"))]

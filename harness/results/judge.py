"""A stored run judged alone: the rows past their limits, and the units that failed. The limits are
resolved by harness/limits.py.

    limits = {key: {metric: limit}}   key: an op, or a whole case (`gsm8k/run_eval`) with a limit of its own

Each row of either carries `allowed_by`: where a known finding the run stored (an op file's KNOWN:
case, impl and metric patterns, until a date) covers it and its date has not passed, "allowlisted until
<date>: <why>"; else None. Only the rows without one fail the run (`failing`)."""

from __future__ import annotations

import math
from datetime import date

import pandas as pd

from harness.results import ceilings
from harness.results import metrics as M
from harness.results.gate import Allow
from harness.results.store import FAILURES, Run

Limits = dict[str, dict[str, float]]


def allowed(rows: pd.DataFrame, known: list[dict], today: date | None = None) -> pd.Series:
    """Per row, why a known finding allows it ("allowlisted until <date>: <why>"), else None. An entry
    whose date has passed allows nothing: the finding fails again, and `expired` names it."""
    today = today or date.today()
    live = [a for a in map(_entry, known) if a.live(today)]

    def why(r) -> str | None:
        a = next((a for a in live if a.covers(r["case"], r["impl"], r["metric"])), None)
        return f"allowlisted until {a.until}: {a.why}" if a else None

    return pd.Series([why(r) for _, r in rows.iterrows()], index=rows.index, dtype=object)


def expired(rows: pd.DataFrame, known: list[dict], today: date | None = None) -> list[dict]:
    """The known findings whose date has passed and that still match a row: to fix, or to extend."""
    today = today or date.today()
    return [
        k
        for k in known
        if not _entry(k).live(today)
        and any(_entry(k).covers(r["case"], r["impl"], r["metric"]) for _, r in rows.iterrows())
    ]


def _entry(k: dict) -> Allow:
    """A stored known finding (contract.Known.resolved) as the gate's allow entry: one matching rule."""
    return Allow(**k)


def known(run: Run) -> list[dict]:
    """The known findings the run was judged with (stored with it when it ran)."""
    return list(run.manifest.get("known") or [])


def breaches(run: Run, limits: Limits) -> pd.DataFrame:
    """The rows of `run` past `limits` (harness/limits.py resolves a run's), each with `allowed_by`."""
    m = run.measurements
    if m.empty:
        return m.assign(ceiling=pd.Series(dtype=float), allowed_by=pd.Series(dtype=object))
    over = ceilings.breaches(m, limits)
    return over.assign(allowed_by=allowed(over, known(run)))


def broken(run: Run) -> pd.DataFrame:
    """The units that failed, crashed or timed out (a path x case, an evaluation, a sweep point, an
    audited kernel), each with `allowed_by`."""
    m = run.measurements
    if m.empty:
        return m.assign(allowed_by=pd.Series(dtype=object))
    bad = m[m["status"].isin(FAILURES) & ((m["metric"] == M.OUTCOME) | (m["suite"] == "audit"))]
    return bad.assign(allowed_by=allowed(bad, known(run)))


def failing(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of `breaches` or `broken` no known finding allows: what fails the run."""
    return rows[rows["allowed_by"].isna()] if "allowed_by" in rows else rows


def unjudged(run: Run, limits: Limits) -> list[dict]:
    """Each figure of the kernel suite that no limit judges: (op, metric), the paths that report it, and
    why no limit applies where the op file says (its UNJUDGED, stored with the run), else None. Figures
    shown beside calc_diff (metrics.DESCRIPTIVE), timings and wall seconds are not drift to judge."""
    m = run.measurements
    if m.empty:
        return []
    said = run.manifest.get("unjudged") or {}
    k = m[(m["suite"] == "kernels") & (m["status"] == "ok") & (m["reference"].isna() | (m["reference"] == M.ORACLE))]
    if k.empty:
        return []
    k = k[k["metric"].map(lambda x: M.family(x) in (M.DRIFT, M.COUNT) and x not in M.DESCRIPTIVE).astype(bool)]
    out = []
    for (op, metric), g in k.groupby([k["case"].str.split("/").str[0], "metric"], sort=True):
        side, _, stat = metric.rpartition(".")
        have = limits.get(op, {})
        if side and stat in M.DESCRIPTIVE and any(key.split(":")[-1].startswith(side + ".") for key in have):
            continue  # a side output's max_abs beside the calc_diff that judges that output
        loose = [p for p in sorted(set(g["impl"])) if math.isinf(ceilings.limit_of(limits, op, p, metric))]
        if loose:
            out.append({"op": op, "metric": metric, "paths": loose, "why": (said.get(op) or {}).get(metric)})
    return out

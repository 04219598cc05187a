"""Absolute drift ceilings, checked on a run alone (no baseline needed).

Defaults follow upstream practice for calc_diff against a float64 oracle: bf16 1e-5, fp8 1e-3, fp4
1e-2 with one fp4 operand and 2e-2 with both; fp32 arithmetic 1e-9 and TF32 (10-bit mantissa, as
tensor cores round fp32 operands) 1e-6; a finite reference must never meet a non-finite candidate.
Op files add their own (CEILINGS) and profiles override per op and metric; a key `<path>:<metric>`
limits one path where paths legitimately differ (a count one convention makes non-zero). For a metric
where higher is better (a recall), the limit is a floor."""

from __future__ import annotations

import math

import pandas as pd

from harness.results import metrics as M

CALC_DIFF = {"fp32": 1e-9, "tf32": 1e-6, "bf16": 1e-5, "fp8": 1e-3, "fp4": 1e-2, "fp4x2": 2e-2}


def default_ceilings(dtype: str) -> dict[str, float]:
    if dtype not in CALC_DIFF:
        raise ValueError(f"DTYPE {dtype!r} has no default ceiling (known: {', '.join(CALC_DIFF)})")
    # one row may drift more than the whole tensor; five times the global ceiling still catches a
    # single corrupted scale or index (tests/test_planted_faults.py)
    # and whatever the precision: outputs as production takes them, the same bits from every launch
    return {
        M.CALC_DIFF: CALC_DIFF[dtype],
        M.WORST_ROW_CALC_DIFF: 5 * CALC_DIFF[dtype],
        M.NONFINITE_MISMATCH: 0.0,
        M.CONTRACT_VIOLATIONS: 0.0,
        M.NONDETERMINISTIC: 0.0,
        M.STRAY_WRITES: 0.0,
    }


def limit_of(ceilings: dict[str, dict[str, float]], case: str, impl: str, metric: str) -> float:
    """The limit of `metric` for path `impl` on `case`: keyed by the whole case where one case has its own,
    else by its op (the case's first part); within either, `<path>:<metric>` (where paths legitimately
    differ) before `<metric>`. A side output's non-finite mismatch is 0 wherever nothing else is said.
    inf: no limit."""
    for key in (case, case.split("/")[0]):
        d = ceilings.get(key, {})
        for name in (f"{impl}:{metric}", metric):
            if name in d:
                return d[name]
    return 0.0 if metric.endswith("." + M.NONFINITE_MISMATCH) else math.inf


def breaches(rows: pd.DataFrame, ceilings: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Rows past their op's limit (over a ceiling, under a floor where higher is better); `ceilings` maps
    op -> metric -> limit. NaN counts as past."""
    if rows.empty:
        return rows
    # a ceiling bounds the drift from the fp64 oracle (or a figure with no reference, like an audit's);
    # two kernels' difference from each other sums both their errors, and is judged through
    # rmse_ratio, whose reference is always a golden kernel
    ok = rows[
        (rows["status"] == "ok")
        & (rows["reference"].isna() | rows["reference"].isin([M.ORACLE]) | (rows["metric"] == M.RMSE_RATIO))
    ]

    limit = [limit_of(ceilings, c, i, m) for c, i, m in zip(ok["case"], ok["impl"], ok["metric"])]
    limit = pd.Series(limit, index=ok.index, dtype=float)
    floor = ok["better"].eq("higher") if "better" in ok else pd.Series(False, index=ok.index)
    limit = limit.where(~floor | limit.lt(math.inf), -math.inf)  # no floor declared: none applies
    over = ((ok["value"] > limit) & ~floor) | ((ok["value"] < limit) & floor)
    over |= ok["value"].isna() & limit.abs().lt(math.inf)
    return ok[over].assign(ceiling=limit[over])

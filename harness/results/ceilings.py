"""Absolute drift ceilings, checked on a run alone (no baseline needed).

Defaults follow upstream practice for calc_diff against a float64 oracle: bf16 1e-5, fp8 1e-3, fp4
1e-2 with one fp4 operand and 2e-2 with both; fp32 arithmetic 1e-9 and TF32 (10-bit mantissa, as
tensor cores round fp32 operands) 1e-6; a finite reference must never meet a non-finite candidate.
Op files add their own (CEILINGS) and profiles override per op and metric. For a metric where higher
is better (a recall), the limit is a floor."""

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
    return {M.CALC_DIFF: CALC_DIFF[dtype], M.WORST_ROW_CALC_DIFF: 5 * CALC_DIFF[dtype], M.NONFINITE_MISMATCH: 0.0}


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
    # keyed by op (a case's first part), or by a whole case where one case has its own limit
    limit = [
        ceilings.get(c, {}).get(m, ceilings.get(c.split("/")[0], {}).get(m, math.inf))
        for c, m in zip(ok["case"], ok["metric"])
    ]
    limit = pd.Series(limit, index=ok.index, dtype=float)
    floor = ok["better"].eq("higher") if "better" in ok else pd.Series(False, index=ok.index)
    limit = limit.where(~floor | limit.lt(math.inf), -math.inf)  # no floor declared: none applies
    over = ((ok["value"] > limit) & ~floor) | ((ok["value"] < limit) & floor)
    over |= ok["value"].isna() & limit.abs().lt(math.inf)
    return ok[over].assign(ceiling=limit[over])

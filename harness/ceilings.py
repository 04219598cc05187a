"""Absolute drift ceilings, checked on a run alone (no baseline needed).

Defaults follow upstream practice for calc_diff against a float64 oracle: bf16 1e-5, fp8 1e-3, fp4
1e-2 with one fp4 operand and 2e-2 with both; a finite reference must never meet a non-finite
candidate. Profiles override per op and metric."""

from __future__ import annotations

import math

import pandas as pd

CALC_DIFF = {"bf16": 1e-5, "fp8": 1e-3, "fp4": 1e-2, "fp4x2": 2e-2}


def default_ceilings(dtype: str) -> dict[str, float]:
    if dtype not in CALC_DIFF:
        raise ValueError(f"DTYPE {dtype!r} has no default ceiling (known: {', '.join(CALC_DIFF)})")
    # one row may drift more than the whole tensor; five times the global ceiling still catches a
    # single corrupted scale or index (tests/test_planted_faults.py)
    return {"calc_diff": CALC_DIFF[dtype], "worst_row_calc_diff": 5 * CALC_DIFF[dtype], "nonfinite_mismatch": 0.0}


def breaches(rows: pd.DataFrame, ceilings: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Rows over their op's ceiling; `ceilings` maps op -> metric -> ceiling. NaN counts as over."""
    if rows.empty:
        return rows
    # a ceiling bounds the drift from the fp64 oracle (or a figure with no reference, like an audit's);
    # two kernels' difference from each other sums both their errors, and is judged through
    # rmse_ratio, whose reference is always a golden kernel
    ok = rows[
        (rows["status"] == "ok")
        & (rows["reference"].isna() | rows["reference"].isin(["fp64"]) | (rows["metric"] == "rmse_ratio"))
    ]
    op = ok["case"].str.split("/").str[0]
    limit = [ceilings.get(o, {}).get(m, math.inf) for o, m in zip(op, ok["metric"])]
    limit = pd.Series(limit, index=ok.index, dtype=float)
    over = (ok["value"] > limit) | (ok["value"].isna() & limit.lt(math.inf))
    return ok[over].assign(ceiling=limit[over])

"""Comparing two runs: a pure function over their measurements.

Rows are aligned on (suite, case, impl, reference, metric); a differing case_version makes a row
`not comparable`, never a regression. Each row gets one verdict:

    regressed / improved   the change is past its threshold AND statistically real
    same                   it is not (or it is, but small)
    new / missing          only the candidate / only the baseline has the row
    failed / fixed         the candidate's status is not ok / the baseline's was not and now is
    not comparable         the case changed, or the row was skipped

"Statistically real": Mann-Whitney on the samples of repeated timings and throughputs; McNemar on
per-question samples (0/1) of an accuracy; a figure with no samples (a drift metric, computed once on
identical inputs) is judged by its threshold alone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness import stats
from harness.console import fmt
from harness.store import FAILURES

KEY = ["suite", "case", "impl", "reference", "metric"]
ALPHA = 0.05


@dataclass(frozen=True)
class Threshold:
    relative: float  # |b - a| / |a| past which a change counts
    floor: float = 0.0  # changes of values both below this are noise (a drift of 1e-12 doubling)


# per metric: how big a change must be to count
THRESHOLDS: dict[str, Threshold] = {
    "time_us": Threshold(0.02),
    "gbps": Threshold(0.02),
    "tflops": Threshold(0.02),
    "roofline_frac": Threshold(0.02),
    "time_ratio": Threshold(0.02),
    "output_tok_s": Threshold(0.02),
    "request_s": Threshold(0.02),
    "gsm8k_acc": Threshold(0.01),
    "outcome": Threshold(math.inf),  # its value is wall seconds, JIT included: never a verdict of its own
}
DRIFT = Threshold(1.0, floor=1e-9)  # drift figures: twice as large (or half) is a change


def threshold(metric: str) -> Threshold:
    if metric in THRESHOLDS:
        return THRESHOLDS[metric]
    if metric.startswith("wall_"):  # where a run's seconds went: load and caches move them, never a verdict
        return THRESHOLDS["outcome"]
    if metric.endswith("nonfinite_mismatch") or metric in (
        "shared_bytes",
        "registers",
        "spill_bytes",
        "forbidden_instructions",
        "kernels",
    ):
        return Threshold(0.0)  # counts: any change is one
    return DRIFT


def _samples(v) -> list[float]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return [float(x) for x in v]


def _judge(a: pd.Series, b: pd.Series) -> tuple[str, float, float, str]:
    """(verdict, relative change, p-value, reason) for two ok rows of the same key."""
    va, vb = float(a["value"]), float(b["value"])
    if math.isnan(va) or math.isnan(vb):
        return (
            ("same", math.nan, math.nan, "no value")
            if math.isnan(va) and math.isnan(vb)
            else (
                "regressed" if math.isnan(vb) else "improved",
                math.nan,
                math.nan,
                "value became NaN" if math.isnan(vb) else "value no longer NaN",
            )
        )
    t = threshold(b["metric"])
    change = (vb - va) / abs(va) if va != 0 else (0.0 if vb == 0 else math.inf)
    worse = vb > va if b["better"] == "lower" else vb < va
    if max(abs(va), abs(vb)) < t.floor or abs(change) <= t.relative:
        return "same", change, math.nan, f"within {t.relative:.0%}" if t.relative < math.inf else "not judged"
    sa, sb = _samples(a["samples"]), _samples(b["samples"])
    p = math.nan
    if sa and sb:
        binary = set(sa) | set(sb) <= {0.0, 1.0}
        if binary and len(sa) == len(sb):  # the same questions, answered by both runs
            only_a = sum(1 for x, y in zip(sa, sb) if x == 1 and y == 0)
            only_b = sum(1 for x, y in zip(sa, sb) if x == 0 and y == 1)
            p = stats.mcnemar_p(only_a, only_b)
        else:
            p = stats.mann_whitney_p(sa, sb)
        if p >= ALPHA:
            return "same", change, p, f"{change:+.1%} is within the noise (p={p:.2g})"
    verdict = "regressed" if worse else "improved"
    return verdict, change, p, f"{change:+.1%}" + (f", p={p:.2g}" if not math.isnan(p) else "")


def _side(r: pd.Series, s: str) -> pd.Series:
    return pd.Series(
        {"value": r[f"value_{s}"], "samples": r[f"samples_{s}"], "metric": r["metric"], "better": r[f"better_{s}"]}
    )


def compare(baseline: pd.DataFrame, candidate: pd.DataFrame) -> pd.DataFrame:
    """One row per aligned key, with both values, the change, the p-value and the verdict."""
    cols = KEY + ["case_version", "value", "samples", "status", "better", "unit"]
    a = baseline[cols].copy()
    b = candidate[cols].copy()
    for df in (a, b):
        df["reference"] = df["reference"].fillna("")
    merged = a.merge(b, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    out = []
    for _, r in merged.iterrows():
        row = {k: r[k] for k in KEY}
        row.update(baseline=r.get("value_a"), candidate=r.get("value_b"), change=math.nan, p_value=math.nan)
        if r["_merge"] == "right_only":
            verdict, reason = "new", ""
        elif r["_merge"] == "left_only":
            verdict, reason = "missing", ""
        elif r["case_version_a"] != r["case_version_b"]:
            verdict, reason = "not comparable", "the case changed"
        else:
            sa, sb = r["status_a"], r["status_b"]
            bad = FAILURES
            if sb in bad:
                verdict, reason = "failed", sb if sa not in bad else f"{sb}, as in the baseline"
            elif sa in bad and sb == "ok":
                verdict, reason = "fixed", f"was {sa}"
            elif sa == sb and sb.startswith("skipped"):
                verdict, reason = "same", "skipped in both"
            elif sa.startswith("skipped") or sb.startswith("skipped"):
                verdict, reason = "not comparable", sb if sb.startswith("skipped") else sa
            else:
                verdict, change, p, reason = _judge(_side(r, "a"), _side(r, "b"))
                row.update(change=change, p_value=p)
        row.update(verdict=verdict, reason=reason)
        out.append(row)
    return pd.DataFrame(out, columns=KEY + ["baseline", "candidate", "change", "p_value", "verdict", "reason"])


def summary_counts(result: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in result["verdict"].value_counts().items()}


def to_markdown(result: pd.DataFrame, title: str) -> str:
    """The rows that changed, as a Markdown table (a pull-request comment)."""
    counts = ", ".join(f"{v} {k}" for k, v in summary_counts(result).items())
    changed = result[result["verdict"] != "same"]
    lines = [f"### {title}", "", counts, ""]
    if changed.empty:
        return "\n".join(lines + ["No change past its threshold."])
    lines += [
        "| verdict | case | impl | reference | metric | baseline | candidate | change | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in changed.iterrows():
        cells = [
            r["verdict"],
            r["case"],
            r["impl"],
            r["reference"],
            r["metric"],
            fmt(r["baseline"]),
            fmt(r["candidate"]),
            "" if math.isnan(r["change"]) else f"{r['change']:+.1%}",
            r["reason"],
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

"""Comparing two runs: a pure function over their measurements.

Rows are aligned on (suite, case, impl, reference, metric); a differing case_version makes a row
`not comparable`, never a regression. Each row gets one verdict:

    regressed / improved   the change is past its threshold AND statistically real
    same                   it is not (or it is, but small)
    new / missing          only the candidate / only the baseline has the row
    failed / fixed         the candidate's status is not ok / the baseline's was not and now is
    absent                 the path ran in the baseline; its function is not in the candidate's SGLang
                           (coverage lost: the baseline's figures of that path go with it)
    not comparable         the case changed, or the row was skipped

"Statistically real": Mann-Whitney on the samples of repeated timings and throughputs; McNemar on
per-question samples (0/1) of an accuracy; a figure with no samples (a drift metric, computed once on
identical inputs) is judged by its threshold alone. Where the samples are too few for the test ever to
reach ALPHA (3 repeats a side: Mann-Whitney's least p is 0.1), the change counts only if the two
runs' samples do not overlap at all, and the reason says so; a change past its threshold that this
rule does not confirm is `same`, its reason marked "~" (as asv marks a change it cannot confirm). A
figure derived from a timing (harness/results/metrics.py) takes that timing's verdict. Thresholds and tests
per metric: harness/results/metrics.py."""

from __future__ import annotations

import math

import pandas as pd

from harness.results import metrics, stats
from harness.results.store import ABSENT, FAILURES

KEY = ["suite", "case", "impl", "reference", "metric"]
ALPHA = metrics.ALPHA


def _samples(v) -> list[float]:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return [float(x) for x in v]


def _significance(m: metrics.MetricInfo, sa: list[float], sb: list[float], change: float) -> tuple[bool, float, str]:
    """(is the change real, its p-value, why) for the samples of two runs."""
    binary = set(sa) | set(sb) <= {0.0, 1.0}
    if binary and len(sa) == len(sb):  # the same questions, answered by both runs
        only_a = sum(1 for x, y in zip(sa, sb) if x == 1 and y == 0)
        only_b = sum(1 for x, y in zip(sa, sb) if x == 0 and y == 1)
        p = stats.mcnemar_p(only_a, only_b)
        return p < ALPHA, p, f"{change:+.1%} is within the noise (p={p:.2g})"
    least = metrics.least_p(metrics.MANN_WHITNEY, len(sa), len(sb))
    if least < ALPHA:
        p = stats.mann_whitney_p(sa, sb)
        return p < ALPHA, p, f"{change:+.1%} is within the noise (p={p:.2g})"
    # too few samples for the test to ever reach ALPHA: the stated fallback rule instead
    apart = min(sa) > max(sb) or min(sb) > max(sa)
    few = f"{len(sa)} and {len(sb)} samples cannot reach p<{ALPHA:g} (least p {least:.2g})"
    if len(sa) < metrics.FALLBACK_SAMPLES or len(sb) < metrics.FALLBACK_SAMPLES or not apart:
        return False, math.nan, f"~ {change:+.1%}: {few}, and the fallback rule ({metrics.FALLBACK_RULE}) does not hold"
    return True, math.nan, f"{few}; by the fallback rule, {metrics.FALLBACK_RULE}"


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
    m = metrics.get(b["metric"])
    change = (vb - va) / abs(va) if va != 0 else (0.0 if vb == 0 else math.inf)
    worse = vb > va if b["better"] == "lower" else vb < va
    if max(abs(va), abs(vb)) < m.floor or abs(change) <= m.change:
        return "same", change, math.nan, f"within {m.change:.0%}" if m.change < math.inf else "not judged"
    sa, sb = _samples(a["samples"]), _samples(b["samples"])
    p, why = math.nan, ""
    if sa and sb:
        real, p, why = _significance(m, sa, sb, change)
        if not real:
            return "same", change, p, why
    verdict = "regressed" if worse else "improved"
    if not math.isnan(p):
        why = f"p={p:.2g}"
    return verdict, change, p, f"{change:+.1%}" + (f", {why}" if why else "")


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
            sb = r["status_b"]  # a path that fails is a failure, whether or not the baseline had it
            verdict, reason = ("failed", f"{sb} (new: the baseline has no such row)") if sb in FAILURES else ("new", "")
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
            elif sb.startswith(ABSENT) and not sa.startswith(ABSENT):
                verdict, reason = "absent", f"coverage lost: {sb}"
            elif sa == sb and sb.startswith(("skipped", ABSENT)):
                verdict, reason = "same", f"{sb.split('(')[0]} in both"
            elif sa.startswith(ABSENT):
                verdict, reason = "not comparable", sa
            elif sa.startswith("skipped") or sb.startswith("skipped"):
                verdict, reason = "not comparable", sb if sb.startswith("skipped") else sa
            else:
                verdict, change, p, reason = _judge(_side(r, "a"), _side(r, "b"))
                row.update(change=change, p_value=p)
        row.update(verdict=verdict, reason=reason)
        out.append(row)
    _follow_sources(out)
    _follow_absence(out)
    return pd.DataFrame(out, columns=KEY + ["baseline", "candidate", "change", "p_value", "verdict", "reason"])


def _follow_absence(rows: list[dict]) -> None:
    """A path absent from the candidate's SGLang has no figures: the baseline's figures of that path and
    case are lost with it, not missing for an unknown reason."""
    gone = {(r["case"], r["impl"]): r["reason"] for r in rows if r["verdict"] == "absent"}
    for r in rows:
        if r["verdict"] == "missing" and (r["case"], r["impl"]) in gone:
            r.update(verdict="absent", reason=gone[(r["case"], r["impl"])])


def _follow_sources(rows: list[dict]) -> None:
    """A figure derived from a timing (GB/s, TFLOP/s, % of roofline, the ratio to a golden) takes that
    timing's verdict and p-value: one measurement, one verdict. Its own change is kept."""
    judged = {tuple(r[k] for k in KEY): r for r in rows}
    for r in rows:
        source = metrics.get(r["metric"]).derived_from
        if source is None or r["verdict"] not in ("same", "regressed", "improved"):
            continue
        # the timing is the path's own, against no reference (a time_ratio's reference is its golden)
        t = judged.get((r["suite"], r["case"], r["impl"], "", source))
        if t is None or t["verdict"] not in ("same", "regressed", "improved"):
            continue
        r.update(verdict=t["verdict"], p_value=t["p_value"], reason=f"as {source}: {t['reason']}")


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
            metrics.fmt(r["baseline"]),
            metrics.fmt(r["candidate"]),
            "" if math.isnan(r["change"]) else f"{r['change']:+.1%}",
            r["reason"],
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

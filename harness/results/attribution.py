"""Attribution: when an end-to-end figure drops between two runs (a GSM8K accuracy, a tok/s), which
kernel rows moved between the same two runs, ranked. Pure: two runs' rows in, with compare()'s
verdicts on them as they are, ranked kernel rows out.

A kernel row moved when compare() calls it `regressed` (a drift figure past its threshold, a time
slower past its threshold and significantly) or `failed` where the baseline's path was not failing.
Golden paths are left out: they are not SGLang's code. Rows are ranked per op and path by how many
times worse their worst row got (a new failure first), then by how many of their rows moved."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from harness.results import metrics as M
from harness.results.compare import compare
from harness.results.store import FAILURES

# end-to-end figures whose drop asks "which kernel?"
END_TO_END = {M.GSM8K_ACC: "accuracy", M.OUTPUT_TOK_S: "perf", M.REQUEST_S: "perf"}
SHOWN = 3  # paths named in the one-line headline


@dataclass(frozen=True)
class Drop:
    case: str
    metric: str
    baseline: float
    candidate: float
    change: float
    p_value: float

    def text(self) -> str:
        p = "" if math.isnan(self.p_value) else f", p={self.p_value:.2g}"
        if self.metric == M.GSM8K_ACC:
            return f"GSM8K {100 * (self.candidate - self.baseline):+.1f} points ({self.case}{p})"
        return f"{self.case} {self.metric} {self.change:+.1%} ({self.baseline:.4g} -> {self.candidate:.4g}{p})"


@dataclass(frozen=True)
class Moved:
    """The worst moved row of one op's path, and how many of its rows moved."""

    op: str
    impl: str
    case: str
    reference: str
    metric: str
    baseline: float
    candidate: float
    factor: float  # how many times worse (inf: a new failure, or from exactly 0)
    rows: int
    why: str  # compare()'s reason: the change and its p-value, or the status of a failed path

    def text(self) -> str:
        if self.metric == M.OUTCOME:
            return f"{self.op}/{self.impl} failed"
        times = "x inf" if math.isinf(self.factor) else f"x{self.factor:.2g}"
        return f"{self.op}/{self.impl} {self.metric} {times}"


@dataclass(frozen=True)
class Attribution:
    drops: list[Drop]
    moved: list[Moved]
    kernel_rows: tuple[bool, bool]  # whether the baseline / the candidate hold kernel rows


def _worse_factor(baseline: float, candidate: float, better: str) -> float:
    if math.isnan(baseline) or math.isnan(candidate):
        return math.inf
    worse, than = (candidate, baseline) if better == "lower" else (baseline, candidate)
    if than == 0:
        return math.inf if worse != 0 else 1.0
    return abs(worse / than)


def _goldens(rows: pd.DataFrame) -> set[str]:
    o = rows[rows["metric"] == M.OUTCOME]
    return {i for i, d in zip(o["impl"], o["detail"]) if json.loads(d or "{}").get("golden")}


def attribute(baseline: pd.DataFrame, candidate: pd.DataFrame, compared: pd.DataFrame | None = None) -> Attribution:
    """The end-to-end drops between two runs and the kernel paths that moved, most first. `compared`
    is compare(baseline, candidate) when the caller has it already."""
    c = compare(baseline, candidate) if compared is None else compared
    drops = [
        Drop(r.case, r.metric, float(r.baseline), float(r.candidate), float(r.change), float(r.p_value))
        for r in c.itertuples()
        if r.verdict == "regressed" and END_TO_END.get(r.metric) == r.suite
    ]
    goldens = _goldens(baseline) | _goldens(candidate)
    better = dict(zip(zip(candidate["case"], candidate["impl"], candidate["metric"]), candidate["better"]))
    was = dict(zip(zip(baseline["case"], baseline["impl"], baseline["metric"]), baseline["status"]))
    worst: dict[tuple[str, str], Moved] = {}
    counts: dict[tuple[str, str], int] = {}
    for r in c.itertuples():
        if r.suite != "kernels" or r.impl in goldens:
            continue
        if r.verdict == "failed" and was.get((r.case, r.impl, r.metric)) not in FAILURES:
            factor = math.inf
        elif r.verdict == "regressed":
            factor = _worse_factor(
                float(r.baseline), float(r.candidate), better.get((r.case, r.impl, r.metric), "lower")
            )
        else:
            continue
        op = r.case.split("/", 1)[0]
        key = (op, r.impl)
        counts[key] = counts.get(key, 0) + 1
        if key not in worst or factor > worst[key].factor:
            worst[key] = Moved(
                op, r.impl, r.case, r.reference, r.metric, float(r.baseline), float(r.candidate), factor, 0, r.reason
            )
    moved = [Moved(**{**m.__dict__, "rows": counts[k]}) for k, m in worst.items()]
    moved.sort(key=lambda m: (-m.factor, -m.rows, m.op, m.impl))
    has = tuple(bool((df["suite"] == "kernels").any()) for df in (baseline, candidate))
    return Attribution(drops, moved, has)


def kernel_runs(manifests: list[dict], commit: str | None) -> list[str]:
    """Ids of the runs (by their manifests) that hold kernel rows at SGLang `commit`."""
    if not commit:
        return []
    return [
        m["run_id"]
        for m in manifests
        if (m.get("fingerprint") or {}).get("sglang_commit") == commit and "kernels" in (m.get("suites") or [])
    ]


def markdown(a: Attribution, runs: tuple[dict, dict], others: list[dict]) -> str:
    """The attribution section of a comparison or a gate (empty when nothing end-to-end dropped).
    `runs` are the baseline's and the candidate's manifests; `others`, the store's, to name the runs
    that hold kernel rows when these two do not."""
    if not a.drops:
        return ""
    drops = "; ".join(d.text() for d in a.drops)
    lines = ["", "#### Attribution", ""]
    if not all(a.kernel_rows):
        lines.append(f"{drops}. No kernel rows to attribute it to:")
        for (side, m), has in zip(zip(("baseline", "candidate"), runs), a.kernel_rows):
            commit = (m.get("fingerprint") or {}).get("sglang_commit")
            if has:
                continue
            found = [r for r in kernel_runs(others, commit) if r != m.get("run_id")]
            at = f"SGLang {commit[:12]}" if commit else "an unknown SGLang commit"
            hint = f"runs of the store that do: {', '.join(found)}" if found else "no run of the store does"
            lines.append(f"- the {side} {m.get('run_id')} ({at}) holds none; {hint}")
        return "\n".join(lines)
    if not a.moved:
        lines.append(f"{drops}; no kernel row moved past its threshold between these runs.")
        return "\n".join(lines)
    named = ", ".join(m.text() for m in a.moved[:SHOWN]) + (", ..." if len(a.moved) > SHOWN else "")
    lines += [
        f"{drops}; kernels that moved: {named}",
        "",
        "| op/path | worst row | metric | baseline | candidate | worse | rows moved | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in a.moved:
        ref = f" ({m.reference})" if m.reference else ""
        if m.metric == M.OUTCOME:  # its value is wall seconds: the status is what changed
            cells = [f"{m.op}/{m.impl}", m.case, M.OUTCOME, "ok", m.why, "new failure", m.rows, ""]
        else:
            worse = "inf" if math.isinf(m.factor) else f"x{m.factor:.3g}"
            cells = [
                f"{m.op}/{m.impl}",
                m.case + ref,
                m.metric,
                M.fmt(m.baseline),
                M.fmt(m.candidate),
                worse,
                m.rows,
                m.why,
            ]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines)

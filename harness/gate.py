"""The pull-request gate: what fails a candidate run, as a pure function of two runs and a profile.

It fails on
- a measurement over its absolute ceiling (drift from the oracle, shared memory, ...), candidate alone;
- a path that failed, crashed or timed out;
- a drift figure `drift_factor` times the baseline's or more;
- a slowdown or throughput drop past `perf_regression` that compare() also finds significant;
- an accuracy under `gsm8k_floor`, or a significant accuracy drop.
An allowlist entry (until a date) turns a matching failure into `allowed`; an expired entry does not."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from datetime import date

import pandas as pd

from harness.compare import THRESHOLDS, compare
from harness.profile import GateConfig

PERF = {m for m, t in THRESHOLDS.items() if m != "outcome" and m != "gsm8k_acc"}


@dataclass(frozen=True)
class Finding:
    case: str
    impl: str
    reference: str
    metric: str
    what: str
    allowed_by: str | None = None


def _allowed(f: Finding, cfg: GateConfig, today: date) -> str | None:
    for a in cfg.allow:
        if (
            fnmatch.fnmatchcase(f.case, a.case)
            and fnmatch.fnmatchcase(f.impl, a.impl)
            and fnmatch.fnmatchcase(f.metric, a.metric)
            and today <= date.fromisoformat(a.until)
        ):
            return f"allowed until {a.until}: {a.why}"
    return None


def gate(
    baseline: pd.DataFrame, candidate: pd.DataFrame, breaches: pd.DataFrame, cfg: GateConfig, today: date | None = None
) -> list[Finding]:
    """Every failure of `candidate`; `breaches` is harness.ceilings.breaches() of the candidate."""
    today = today or date.today()
    found: list[Finding] = []
    for _, b in breaches.iterrows():
        ref = "" if pd.isna(b["reference"]) else b["reference"]
        found.append(
            Finding(b["case"], b["impl"], ref, b["metric"], f"{b['value']:.3g} over its ceiling {b['ceiling']:.3g}")
        )
    for _, r in compare(baseline, candidate).iterrows():
        what = None
        if r["verdict"] == "failed":
            what = r["reason"]
        elif r["verdict"] == "regressed":
            change = r["change"]
            if r["metric"] in PERF:
                if not math.isnan(change) and abs(change) >= cfg.perf_regression:
                    what = f"{change:+.1%} (p={r['p_value']:.2g})"
            elif r["metric"] == "gsm8k_acc":
                what = f"accuracy {r['baseline']:.3f} -> {r['candidate']:.3f} (p={r['p_value']:.2g})"
            elif math.isnan(change) or r["candidate"] >= cfg.drift_factor * r["baseline"]:
                what = f"{r['baseline']:.3g} -> {r['candidate']:.3g}"
        if what:
            found.append(Finding(r["case"], r["impl"], r["reference"], r["metric"], what))
    if cfg.gsm8k_floor is not None:
        acc = candidate[(candidate["metric"] == "gsm8k_acc") & (candidate["status"] == "ok")]
        for _, r in acc[acc["value"] < cfg.gsm8k_floor].iterrows():
            found.append(
                Finding(r["case"], r["impl"], "", "gsm8k_acc", f"{r['value']:.3f} under the floor {cfg.gsm8k_floor}")
            )
    return [Finding(**{**f.__dict__, "allowed_by": _allowed(f, cfg, today)}) for f in found]


def markdown(findings: list[Finding], title: str) -> str:
    failing = [f for f in findings if f.allowed_by is None]
    allowed = [f for f in findings if f.allowed_by is not None]
    head = f"### {'FAIL' if failing else 'PASS'}: {title}\n\n{len(failing)} failing, {len(allowed)} allowed"
    lines = [head, ""]
    if findings:
        lines += ["| | case | impl | reference | metric | what |", "|---|---|---|---|---|---|"]
        for f in failing + allowed:
            mark = "fail" if f.allowed_by is None else f"allowed ({f.allowed_by})"
            cells = [mark, f.case, f.impl, f.reference, f.metric, f.what]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

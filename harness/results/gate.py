"""The pull-request gate: what fails a candidate run, as a pure function of two runs and a profile.

It fails on
- a measurement over its absolute ceiling (drift from the oracle, shared memory, ...), candidate alone;
- a path that failed, crashed or timed out;
- a path that ran in the baseline and is absent from the candidate's SGLang (coverage lost);
- a drift figure `drift_factor` times the baseline's or more;
- a slowdown or throughput drop past `perf_regression` that compare() also finds significant;
- an accuracy under `gsm8k_floor`, or a significant accuracy drop.
A failure the baseline already had (a path that failed there too, a limit it crossed too) is listed as
failing before this change and passes, unless `[gate] fail_on_preexisting = true`. An allowlist entry
(until a date) turns a matching failure into `allowed`; an expired entry does not."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from harness.results import metrics as M
from harness.results.compare import compare


@dataclass
class Allow:
    """A known-flaky row the gate lets pass until a date: fnmatch patterns on case, impl and metric."""

    case: str
    impl: str
    metric: str
    until: str  # ISO date; the entry stops counting the day after
    why: str

    def covers(self, case: str, impl: str, metric: str) -> bool:
        pairs = ((case, self.case), (impl, self.impl), (metric, self.metric))
        return all(fnmatch.fnmatchcase(str(value), pattern) for value, pattern in pairs)

    def live(self, today: date) -> bool:
        return today <= date.fromisoformat(self.until)


@dataclass
class GateConfig:
    perf_regression: float = 0.05  # a significant slowdown (or throughput drop) past this fails
    drift_factor: float = 2.0  # drift this many times the baseline's fails
    gsm8k_floor: float | None = None  # an absolute accuracy floor, checked on the candidate
    fail_on_preexisting: bool = False  # a failure the baseline had too fails the gate as well
    allow: list[Allow] = field(default_factory=list)
    allow_missing: list[str] = field(default_factory=list)  # fnmatch patterns of cases a candidate may lack
    subset_of: list[str] = field(default_factory=list)  # profiles whose runs this profile's runs are gated against


class GateRefused(Exception):
    """The two runs are not a baseline and a candidate of one kind: there is nothing to gate."""


@dataclass(frozen=True)
class Compared:
    """What the gate compared: the baseline's judged rows, how many the candidate has, and the rest."""

    baseline_rows: int
    compared: int
    missing: int  # the baseline's rows the candidate lacks, allowed or not
    allowed_missing: int
    new: int  # the candidate's rows the baseline lacks
    candidate_status: str

    @property
    def share(self) -> float:
        return self.compared / self.baseline_rows if self.baseline_rows else 1.0

    def text(self) -> str:
        out = f"compared {self.compared} of the baseline's {self.baseline_rows} rows ({self.share:.1%})"
        if self.missing:
            out += f"; {self.missing} missing from the candidate ({self.allowed_missing} allowed by the profile)"
        out += f"; {self.new} new" if self.new else ""
        return out + f"; the candidate is {self.candidate_status}"


@dataclass(frozen=True)
class Finding:
    case: str
    impl: str
    reference: str
    metric: str
    what: str
    allowed_by: str | None = None
    preexisting: bool = False  # the baseline failed the same way

    @property
    def failing(self) -> bool:
        return self.allowed_by is None and not self.preexisting


def _allowed(f: Finding, cfg: GateConfig, today: date) -> str | None:
    for a in cfg.allow:
        if a.live(today) and a.covers(f.case, f.impl, f.metric):
            return f"allowed until {a.until}: {a.why}"
    return None


def admit(baseline: dict, candidate: dict, cfg: GateConfig) -> list[Finding]:
    """The manifests of the two runs: GateRefused where they are not of one kind (the same run, other
    suites, a profile that is neither the baseline's nor declares itself a subset of it); a finding
    where the candidate did not end complete (an interrupted, killed or running run is never gated as
    if it were whole)."""
    if baseline.get("run_id") == candidate.get("run_id"):
        raise GateRefused(f"the baseline and the candidate are the same run ({candidate.get('run_id')})")
    suites_a, suites_b = sorted(baseline.get("suites") or []), sorted(candidate.get("suites") or [])
    if suites_a != suites_b:
        raise GateRefused(f"the baseline ran {suites_a or 'nothing'}, the candidate {suites_b or 'nothing'}")
    name_a = (baseline.get("profile") or {}).get("name")
    name_b = (candidate.get("profile") or {}).get("name")
    if name_a != name_b and name_a not in cfg.subset_of:
        raise GateRefused(
            f"the baseline ran profile {name_a!r}, the candidate {name_b!r}, which does not declare itself a "
            f"subset of it ([gate] subset_of)"
        )
    status = candidate.get("status")
    if status != "complete":
        return [Finding("(the candidate run)", "", "", "status", f"{status}: only a complete run is gated")]
    return []


def compared_rows(compared: pd.DataFrame, cfg: GateConfig, candidate_status: str) -> tuple[Compared, list[Finding]]:
    """How much of the baseline the candidate has, and a finding per op (or serving case) whose rows are
    missing and not allowed by `[gate] allow_missing`. Where-the-time-went rows explain a run and are
    not counted."""
    judged = compared[~compared["metric"].isin(M.WALL_METRICS)]
    missing = judged[judged["verdict"] == "missing"]
    allowed = missing["case"].map(lambda c: any(fnmatch.fnmatchcase(c, p) for p in cfg.allow_missing)).astype(bool)
    found = []
    for op, rows in missing[~allowed].groupby(missing["case"].str.split("/").str[0], sort=True):
        paths = ", ".join(sorted(set(rows["impl"])))[:200]
        what = f"{len(rows)} of the baseline's rows missing from the candidate (paths: {paths})"
        found.append(Finding(f"{op}/*", "*", "", "*", what))
    cov = Compared(
        baseline_rows=int((judged["verdict"] != "new").sum()),
        compared=int((~judged["verdict"].isin(["new", "missing", "absent"])).sum()),
        missing=len(missing),
        allowed_missing=int(allowed.sum()),
        new=int((judged["verdict"] == "new").sum()),
        candidate_status=candidate_status,
    )
    return cov, found


def _key(r) -> tuple[str, str, str, str]:
    ref = r["reference"]
    return (r["case"], r["impl"], "" if ref is None or pd.isna(ref) else ref, r["metric"])


def gate(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    breaches: pd.DataFrame,
    cfg: GateConfig,
    today: date | None = None,
    baseline_breaches: pd.DataFrame | None = None,
    compared: pd.DataFrame | None = None,
) -> list[Finding]:
    """Every failure of `candidate`; `breaches` is what crossed its limits (harness.results.judge.breaches),
    `baseline_breaches` what crossed the same limits in the baseline, `compared` compare()'s rows of the
    two where they are at hand."""
    today = today or date.today()
    compared = compare(baseline, candidate) if compared is None else compared
    crossed_before = {_key(b) for _, b in baseline_breaches.iterrows()} if baseline_breaches is not None else set()
    found: list[Finding] = []
    for _, b in breaches.iterrows():
        what = f"{b['value']:.3g} over its ceiling {b['ceiling']:.3g}"
        found.append(Finding(*_key(b), what, preexisting=_key(b) in crossed_before))
    for _, r in compared.iterrows():
        what, before = None, False
        if r["verdict"] == "failed":
            what, before = r["reason"], r["reason"].endswith("as in the baseline")
        elif r["verdict"] == "absent" and r["metric"] == M.OUTCOME:  # one finding per path and case
            what = r["reason"]
        elif r["verdict"] == "regressed":
            change, family = r["change"], M.family(r["metric"])
            p = "" if math.isnan(r["p_value"]) else f"p={r['p_value']:.2g}"
            if family in M.PERF_FAMILIES:
                if not math.isnan(change) and abs(change) >= cfg.perf_regression:
                    what = f"{change:+.1%} ({p})" if p else r["reason"]  # the reason names the fallback rule
            elif family == M.ACCURACY:
                what = f"accuracy {r['baseline']:.3f} -> {r['candidate']:.3f} ({p})"
            elif math.isnan(change) or r["candidate"] >= cfg.drift_factor * r["baseline"]:
                what = f"{r['baseline']:.3g} -> {r['candidate']:.3g}"
        if what:
            found.append(Finding(r["case"], r["impl"], r["reference"], r["metric"], what, preexisting=before))
    if cfg.gsm8k_floor is not None:
        acc = candidate[(candidate["metric"] == M.GSM8K_ACC) & (candidate["status"] == "ok")]
        below_before = set()
        if len(baseline):
            b = baseline[(baseline["metric"] == M.GSM8K_ACC) & (baseline["status"] == "ok")]
            below_before = set(b.loc[b["value"] < cfg.gsm8k_floor, "case"])
        for _, r in acc[acc["value"] < cfg.gsm8k_floor].iterrows():
            what = f"{r['value']:.3f} under the floor {cfg.gsm8k_floor}"
            found.append(Finding(r["case"], r["impl"], "", M.GSM8K_ACC, what, preexisting=r["case"] in below_before))
    if cfg.fail_on_preexisting:
        found = [Finding(**{**f.__dict__, "preexisting": False}) for f in found]
    return [Finding(**{**f.__dict__, "allowed_by": _allowed(f, cfg, today)}) for f in found]


def markdown(findings: list[Finding], title: str, cov: Compared | None = None) -> str:
    failing = [f for f in findings if f.failing]
    before = [f for f in findings if f.allowed_by is None and f.preexisting]
    allowed = [f for f in findings if f.allowed_by is not None]
    counts = f"{len(failing)} failing, {len(before)} failing before this change, {len(allowed)} allowed"
    head = f"### {'FAIL' if failing else 'PASS'}: {title}\n\n{counts}" + (f"\n\n{cov.text()}" if cov else "")
    lines = [head, ""]
    if findings:
        lines += ["| | case | impl | reference | metric | what |", "|---|---|---|---|---|---|"]
        for f in failing + before + allowed:
            mark = "fail" if f.failing else "failing before this change" if f.allowed_by is None else ""
            mark = mark or f"allowed ({f.allowed_by})"
            cells = [mark, f.case, f.impl, f.reference, f.metric, f.what]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)

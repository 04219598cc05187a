"""The HTML page of one run, rendered from reports/run.html.j2 (autoescaped: commit messages,
branch names and error texts are untrusted)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jinja2
import pandas as pd

from harness.content import content_dir
from harness.pages import walltime
from harness.pages.console import stored_coverage
from harness.results import judge
from harness.results import metrics as M
from harness.results.metrics import ORACLE
from harness.results.store import Run, atomic_write


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:  # one Environment, so each template is compiled once
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(content_dir("reports"))),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["fmt"] = M.fmt
    return env


def _table(df: pd.DataFrame, over: set) -> list[dict]:
    """A row per (case, path) with its status, its drift against the oracle and against each golden."""
    ref = df["reference"].where(df["reference"].notna(), None)  # pandas 3 reads nulls as NaN
    figures: dict[tuple[str, str], list[dict]] = {}
    for case, impl, r, metric, value in zip(df["case"], df["impl"], ref, df["metric"], df["value"]):
        if metric != M.OUTCOME:
            figures.setdefault((case, impl), []).append(
                {"metric": metric, "reference": r, "value": value, "over": (case, impl, r or "", metric) in over}
            )
    out = []
    o = df[df["metric"] == M.OUTCOME]
    for case, impl, status, seconds, detail in zip(o["case"], o["impl"], o["status"], o["value"], o["detail"]):
        detail = json.loads(detail or "{}")
        out.append(
            {
                "case": case,
                "impl": impl,
                "status": status,
                "seconds": seconds,
                "golden": detail.get("golden", False),
                "error": detail.get("error"),
                "log_tail": detail.get("log_tail"),
                "metrics": figures.get((case, impl), []),
                # looked up by the template, column by column
                "oracle": {m["metric"]: m for m in figures.get((case, impl), []) if m["reference"] == ORACLE},
                "plain": {m["metric"]: m for m in figures.get((case, impl), []) if m["reference"] is None},
                "goldens": [m for m in figures.get((case, impl), []) if m["reference"] not in (None, ORACLE)],
                # the op's own metrics (a recall, an exact-match count): not in the standard columns
                "extra": [
                    m
                    for m in figures.get((case, impl), [])
                    if m["reference"] == ORACLE and m["metric"] not in STANDARD and "." not in m["metric"]
                ],
            }
        )
    return out


STANDARD = set(M.STANDARD_DRIFT)


PERF_COLUMNS = (M.OUTPUT_TOK_S, M.REQUEST_S, M.latency("ttft", "median"), M.latency("ttft", "p99"))
PERF_COLUMNS += (M.latency("itl", "median"), M.latency("itl", "p99"), M.latency("tpot", "median"))
PERF_COLUMNS += (M.latency("e2e_latency", "median"),)


def _serving(run: Run, df: pd.DataFrame, over: set) -> dict:
    """The server, GSM8K per evaluation, the sweep per point, and what failed."""
    acc, perf, failed = [], [], []
    a = df[(df["metric"] == M.GSM8K_ACC) & (df["status"] == "ok")]
    for case, value, detail in zip(a["case"], a["value"], a["detail"]):
        d = json.loads(detail or "{}")
        lo, hi = d.get("wilson95") or (None, None)
        acc.append(
            {
                "case": case,
                "value": value,
                "lo": lo,
                "hi": hi,
                "n": d.get("n"),
                "stderr": d.get("stderr"),
                "floor": d.get("floor"),
                "tool": d.get("tool", ""),
                "over": (case, "server", "", M.GSM8K_ACC) in over,
            }
        )
    p = df[(df["suite"] == "perf") & (df["status"] == "ok") & (df["metric"] != M.OUTCOME)]
    for case, g in p.groupby("case", sort=False):
        tok = g[g["metric"] == M.OUTPUT_TOK_S]
        samples = list(tok["samples"].iloc[0]) if len(tok) and tok["samples"].iloc[0] is not None else []
        perf.append(
            {
                "case": case,
                "m": {**dict.fromkeys(PERF_COLUMNS), **dict(zip(g["metric"], g["value"]))},
                "lo": min(samples) if samples else None,
                "hi": max(samples) if samples else None,
                "repeats": len(samples),
            }
        )
    perf.sort(key=lambda r: (r["case"].rsplit("/c", 1)[0], int(r["case"].rsplit("/c", 1)[1])))
    o = df[(df["metric"] == M.OUTCOME) & df["suite"].isin(["accuracy", "perf"]) & (df["status"] != "ok")]
    for case, status, detail in zip(o["case"], o["status"], o["detail"]):
        failed.append({"case": case, "status": status, "error": json.loads(detail or "{}").get("error", "")})
    return {"server": run.manifest.get("server"), "accuracy": acc, "perf": perf, "failed": failed}


def _audit_table(df: pd.DataFrame, over: set) -> list[dict]:
    """A row per (kernel variant, path) of the SM120 audit."""
    out = []
    for (case, impl), g in df[df["suite"] == "audit"].groupby(["case", "impl"], sort=False):
        detail = json.loads(g["detail"].iloc[0] or "{}")
        out.append(
            {
                "case": case,
                "impl": impl,
                "status": g["status"].iloc[0],
                "error": detail.get("error"),
                "kind": detail.get("kind", ""),
                "file": detail.get("file", ""),
                "figures": dict(zip(g["metric"], g["value"])),
                "over": {m for m in g["metric"] if (case, impl, "", m) in over},
            }
        )
    return out


def render_run(run: Run, breaches: pd.DataFrame, out: Path) -> Path:
    df = run.measurements
    over = set(zip(breaches["case"], breaches["impl"], breaches["reference"].fillna(""), breaches["metric"]))
    kernels = df[df["suite"] == "kernels"] if not df.empty else df
    rows = _table(kernels, over) if not kernels.empty else []
    audit = _audit_table(df, over) if not df.empty else []
    counts = {}
    for r in rows + audit:
        key = r["status"].split("(")[0]
        counts[key] = counts.get(key, 0) + 1
    html = (
        _env()
        .get_template("run.html.j2")
        .render(
            run=run.manifest,
            rows=rows,
            counts=counts,
            breaches=breaches.to_dict("records"),
            audit=audit,
            serving=_serving(run, df, over) if not df.empty else {},
            walltime=walltime.rows(df) if not df.empty else [],
            coverage=stored_coverage(df) if not df.empty else [],
            # judged by the limits stored with the run (a run from before they were: nothing listed)
            unjudged=judge.unjudged(run, run.manifest["limits"]) if "limits" in run.manifest else [],
            M=M,  # the template names metrics through the vocabulary, as the engine does
            parts=walltime.PARTS,
            part_names=walltime.HEAD,
        )
    )
    atomic_write(out, html.encode())
    return out

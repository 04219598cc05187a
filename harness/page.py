"""The HTML page of one run, rendered from reports/run.html.j2 (autoescaped: commit messages,
branch names and error texts are untrusted)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pandas as pd

from harness.console import fmt
from harness.content import content_dir
from harness.op import ORACLE
from harness.store import Run, atomic_write


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(content_dir("reports"))),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.ChainableUndefined,
    )
    env.filters["fmt"] = fmt
    return env


def _table(df: pd.DataFrame, over: set) -> list[dict]:
    """A row per (case, path) with its status, its drift against the oracle and against each golden."""
    out = []
    for _, o in df[df["metric"] == "outcome"].iterrows():
        sub = df[(df["case"] == o["case"]) & (df["impl"] == o["impl"]) & (df["metric"] != "outcome")]
        detail = json.loads(o["detail"] or "{}")
        metrics = [
            {
                "metric": m["metric"],
                "reference": None if pd.isna(m["reference"]) else m["reference"],  # pandas 3 reads nulls as NaN
                "value": m["value"],
                "over": (o["case"], o["impl"], "" if pd.isna(m["reference"]) else m["reference"], m["metric"]) in over,
            }
            for _, m in sub.iterrows()
        ]
        out.append(
            {
                "case": o["case"],
                "impl": o["impl"],
                "status": o["status"],
                "seconds": o["value"],
                "golden": detail.get("golden", False),
                "error": detail.get("error"),
                "log_tail": detail.get("log_tail"),
                "metrics": metrics,
                "headline": {m["metric"]: m["value"] for m in metrics if m["reference"] == ORACLE},
            }
        )
    return out


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
                "figures": dict(zip(g["metric"], g["value"])),
                "over": {m for m in g["metric"] if (case, impl, "", m) in over},
            }
        )
    return out


def render_run(run: Run, breaches: pd.DataFrame, out: Path) -> Path:
    df = run.measurements
    over = set(zip(breaches["case"], breaches["impl"], breaches["reference"].fillna(""), breaches["metric"]))
    rows = _table(df, over) if not df.empty else []
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
        )
    )
    atomic_write(out, html.encode())
    return out

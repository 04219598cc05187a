"""Where a kernel run's seconds went, per (op, path): the wall_<part>_s rows harness/parity/suite.py stores,
as a table for the console and the run page."""

from __future__ import annotations

import json

import pandas as pd

from harness.results import metrics as M

PARTS = M.WALL_PARTS
HEAD = {
    "startup": "start-up",
    "inputs": "inputs",
    "jit": "JIT+imports",
    "call": "call",
    "timing": "timed",
    "drift": "drift",
}


def rows(df: pd.DataFrame) -> list[dict]:
    """One dict per (op, path): total, each part, the rest (saving outputs, the protocol, the worker's
    exit), and the counts behind them; the longest first. Drift is measured by the harness while the
    worker goes on, so it overlaps the worker's parts and is not taken from the rest."""
    w = df[(df["suite"] == "kernels") & df["metric"].str.match(r"^wall_[a-z]+_s$")]
    out = []
    for (op, impl), g in w.groupby(["case", "impl"], sort=False):
        v = {m[len("wall_") : -len("_s")]: float(x) for m, x in zip(g["metric"], g["value"])}
        detail = json.loads(g["detail"].iloc[0] or "{}")
        total = v.get("total", 0.0)
        out.append(
            {
                "op": op,
                "impl": impl,
                "golden": detail.get("golden", False),
                "slot": detail.get("slot"),
                "total": total,
                **{p: v.get(p, 0.0) for p in PARTS},
                "other": max(0.0, total - sum(v.get(p, 0.0) for p in PARTS if p != "drift")),
                "workers": detail.get("workers", 0),
                "forked": detail.get("forked", 0),
                "input_hits": detail.get("input_hits", 0),
                "input_builds": detail.get("input_builds", 0),
            }
        )
    return sorted(out, key=lambda r: -r["total"])


def text(df: pd.DataFrame, schedule: dict | None = None) -> str:
    table = rows(df)
    if not table:
        return ""
    head = ["op", "path", "total s", *(HEAD[p] for p in PARTS), "other", "inputs hit/built"]
    lines = [head]
    for r in table:
        name = r["impl"] + (" (golden)" if r["golden"] else "")
        figures = [f"{r[k]:.1f}" for k in ("total", *PARTS, "other")]
        lines.append([r["op"], name, *figures, f"{r['input_hits']}/{r['input_builds']}"])
    sums = [f"{sum(r[k] for r in table):.1f}" for k in ("total", *PARTS, "other")]
    lines.append(["all", "", *sums, ""])
    widths = [max(len(x[i]) for x in lines) for i in range(len(head))]
    out = "\n".join(
        "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths))).rstrip()
        for x in lines
    )
    if schedule and schedule.get("busy_s"):
        busy = ", ".join(f"{k} {v:.1f} s" for k, v in schedule["busy_s"].items())
        out += f"\nslots busy: {busy}; wall {schedule['makespan_s']:.1f} s (planned from {schedule['planned_from']})"
    return out

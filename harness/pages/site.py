"""The static site of a store: an index of runs, a page per run, the latest comparison, and history
plots (matplotlib images). Run metadata (commit messages, branch names) is untrusted: every template
is autoescaped.

    <out>/index.html             runs, newest first; history; the latest run against the one before it
    <out>/runs/<run_id>.html     one page per run (harness/pages/run_page.py)
    <out>/bisects/<id>.html      one page per bisect: its result and steps, linked to their runs
    <out>/img/*.png              drift per op x path over runs; kernel time over runs; % of roofline
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from harness import limits
from harness.pages.console import stored_coverage
from harness.pages.run_page import _env, render_run
from harness.results import judge
from harness.results import metrics as M
from harness.results.compare import compare
from harness.results.metrics import ORACLE
from harness.results.stats import wilson_interval
from harness.results.store import DAMAGED, Run, atomic_write, list_bisects, list_runs

HISTORY = 60  # runs shown in the history plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    _pyplot().close(fig)
    return out


def _label(run: Run) -> str:
    commit = (run.manifest.get("fingerprint", {}) or {}).get("sglang_commit") or ""
    return f"{run.manifest.get('started_at', '')[:10]} {commit[:7]}".strip()


def _plot_drift(runs: list[Run], out: Path) -> Path | None:
    """Heatmap: the worst calc_diff against fp64 of each op/path (over its cases), per run."""
    plt = _pyplot()
    cols = {}
    for r in runs:
        m = r.measurements
        d = m[(m["metric"] == M.CALC_DIFF) & (m["reference"] == ORACLE) & (m["status"] == "ok")]
        if d.empty:
            continue
        key = d["case"].str.split("/").str[0] + " / " + d["impl"]
        cols[r.run_id] = d.groupby(key)["value"].max()
    if not cols:
        return None
    grid = pd.DataFrame(cols)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * grid.shape[1] + 3), 0.45 * grid.shape[0] + 1.5))
    im = ax.imshow(grid.clip(lower=1e-12).map(math.log10).values, aspect="auto", cmap="viridis")
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    ax.set_xticks(range(grid.shape[1]), [r[:15] for r in grid.columns], rotation=90, fontsize=6)
    ax.set_title("worst calc_diff vs fp64 (log10), per run")
    fig.colorbar(im, ax=ax)
    return _save(fig, out)


def _plot_time(runs: list[Run], out: Path) -> Path | None:
    """Kernel time over runs: per op/path, the geometric mean of time_us over its cases."""
    plt = _pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for i, r in enumerate(runs):
        m = r.measurements
        t = m[(m["metric"] == M.TIME_US) & (m["status"] == "ok") & (m["value"] > 0)]
        key = t["case"].str.split("/").str[0] + " / " + t["impl"]
        for k, v in t.groupby(key)["value"]:
            series.setdefault(k, []).append((i, math.exp(v.map(math.log).mean())))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("run (oldest to newest)")
    ax.set_ylabel("geomean kernel time (us)")
    ax.legend(fontsize=7)
    return _save(fig, out)


def _plot_roofline(run: Run, out: Path) -> Path | None:
    plt = _pyplot()
    m = run.measurements
    r = m[(m["metric"] == M.ROOFLINE_FRAC) & (m["status"] == "ok")]
    if r.empty:
        return None
    key = r["case"].str.split("/").str[0] + " / " + r["impl"]
    best = r.groupby(key)["value"].max().sort_values()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(best) + 1.5))
    ax.barh(best.index, 100 * best.values)
    ax.set_xlabel("% of roofline (best case)")
    ax.set_xscale("log")
    return _save(fig, out)


def _plot_throughput(runs: list[Run], out: Path) -> Path | None:
    """Serving throughput: output tok/s against concurrency, a line per commit (the last 8 runs), and
    each concurrency over runs with its interquartile band from the repeats."""
    plt = _pyplot()
    points = []
    for i, r in enumerate(runs):
        m = r.measurements
        t = m[(m["metric"] == M.OUTPUT_TOK_S) & (m["status"] == "ok")]
        for case, value, samples in zip(t["case"], t["value"], t["samples"]):
            conc = case.rsplit("/c", 1)[-1]
            if conc.isdigit():
                s = list(samples) if samples is not None and len(samples) else [value]
                points.append((i, _label(r), case.rsplit("/", 1)[0], int(conc), value, min(s), max(s)))
    if not points:
        return None
    df = pd.DataFrame(points, columns=["run", "label", "shape", "conc", "value", "lo", "hi"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (_, label, shape), g in df[df["run"] >= df["run"].max() - 7].groupby(["run", "label", "shape"]):
        g = g.sort_values("conc")
        left.plot(g["conc"], g["value"], marker="o", markersize=3, label=f"{label} {shape}")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrency")
    left.set_ylabel("output tok/s")
    left.legend(fontsize=6)
    for (shape, conc), g in df.groupby(["shape", "conc"]):
        g = g.sort_values("run")
        right.plot(g["run"], g["value"], label=f"{shape} c{conc}")
        right.fill_between(g["run"], g["lo"], g["hi"], alpha=0.2)
    right.set_xlabel("run (oldest to newest)")
    right.set_ylabel("output tok/s (band: min-max of repeats)")
    right.legend(fontsize=6)
    return _save(fig, out)


def _plot_accuracy(runs: list[Run], out: Path) -> Path | None:
    """GSM8K accuracy over runs with its 95% Wilson interval (from the per-question samples)."""
    plt = _pyplot()
    points = []
    for i, r in enumerate(runs):
        m = r.measurements
        a = m[(m["metric"] == M.GSM8K_ACC) & (m["status"] == "ok")]
        for case, value, samples in zip(a["case"], a["value"], a["samples"]):
            n = len(samples) if samples is not None else 0
            lo, hi = wilson_interval(round(value * n), n) if n else (value, value)
            points.append((i, case, value, lo, hi))
    if not points:
        return None
    df = pd.DataFrame(points, columns=["run", "case", "value", "lo", "hi"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for case, g in df.groupby("case"):
        ax.errorbar(
            g["run"],
            g["value"],
            yerr=[g["value"] - g["lo"], g["hi"] - g["value"]],
            marker="o",
            markersize=3,
            capsize=2,
            label=case,
        )
    ax.set_xlabel("run (oldest to newest)")
    ax.set_ylabel("GSM8K accuracy (95% Wilson)")
    ax.legend(fontsize=7)
    return _save(fig, out)


def _bisect_pages(store: Path, out: Path, pages: set[str]) -> list[dict]:
    """A page per bisect of the store; the records, newest first."""
    records = list_bisects(store)
    if records:
        (out / "bisects").mkdir(exist_ok=True)
    for b in records:
        tested = {s["commit"]: s["verdict"] for s in b["steps"]}
        subjects = {c["commit"]: c["subject"] for c in b.get("commits") or []}
        html = _env().get_template("bisect.html.j2").render(b=b, tested=tested, subjects=subjects, pages=pages)
        atomic_write(out / "bisects" / f"{b['id']}.html", html.encode())
    return list(reversed(records))


def _coverage(run: Run) -> dict:
    """The run's coverage (groups covered / in part / not) and its paths absent from its SGLang."""
    groups = stored_coverage(run.measurements) if not run.measurements.empty else []
    m = run.measurements
    absent = int((m["status"].str.startswith("absent") & (m["metric"] == M.OUTCOME)).sum()) if not m.empty else 0
    if not groups:
        return {"coverage": None, "absent": absent}
    counts = [sum(g["status"] == s for g in groups) for s in ("covered", "partial", "not")]
    return {"coverage": "{} / {} / {}".format(*counts), "absent": absent}


def build(store: Path, out: Path, kernels_dir: Path | None = None) -> Path:
    """The site of a store; a damaged run is left out, named on the index with the reason, and said on
    stderr."""
    found = list_runs(store)
    damaged = [{"run_id": r.run_id, "why": r.manifest["damaged"]} for r in found if r.status == DAMAGED]
    for d in damaged:
        print(f"sm120-harness: report: leaving out damaged run {d['run_id']}: {d['why']}", file=sys.stderr)
    runs = sorted((r for r in found if r.status != DAMAGED), key=lambda r: r.manifest.get("started_at", ""))
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    rows = []
    for r in runs:
        over = judge.breaches(r, limits.of_run(r, kernels_dir=kernels_dir))  # the limits it was judged by
        page = out / "runs" / f"{r.run_id}.html"
        if not page.exists() or r.run_id == runs[-1].run_id:  # finished runs never change
            render_run(r, over, page)
        rows.append({"run": r.manifest, "label": _label(r), "over": len(judge.failing(over)),
                     "failed": len(judge.failing(judge.broken(r))),
                     **_coverage(r)})  # fmt: skip
    # a bisect's steps are runs of commits out of order: their page is the bisect's, not the history
    history = [r for r in runs if "bisect" not in r.manifest]
    recent = history[-HISTORY:]
    img = out / "img"
    plots = (
        _plot_throughput(recent, img / "throughput.png"),
        _plot_accuracy(recent, img / "gsm8k.png"),
        _plot_drift(recent, img / "drift.png"),
        _plot_time(recent, img / "time.png"),
        _plot_roofline(history[-1], img / "roofline.png") if history else None,
    )
    images = [p for p in plots if p]
    latest_compare = None
    if history:
        latest = history[-1]
        profile = latest.manifest.get("profile", {}).get("name")
        previous = [r for r in history[:-1] if r.manifest.get("profile", {}).get("name") == profile]
        if previous:
            c = compare(previous[-1].measurements, latest.measurements)
            latest_compare = {
                "a": previous[-1].run_id,
                "b": latest.run_id,
                "counts": c["verdict"].value_counts().to_dict(),
                "rows": c[c["verdict"] != "same"].head(200).to_dict("records"),
            }
    bisects = _bisect_pages(store, out, {r.run_id for r in runs})
    html = (
        _env()
        .get_template("index.html.j2")
        .render(
            runs=list(reversed(rows)),
            images=[p.name for p in images],
            compare=latest_compare,
            bisects=bisects,
            damaged=damaged,
        )
    )
    atomic_write(out / "index.html", html.encode())
    return out / "index.html"

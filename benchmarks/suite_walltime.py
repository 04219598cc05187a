"""Wall time of whole kernel-suite runs, cold and warm, and where each op's seconds went.

Targets (issue 14): on one H200, `nightly` at most 600 s from a cold start and 300 s with warm JIT
caches, `pr` at most 180 s warm; the CPU smoke profile at most 120 s on a 2-core machine.

    python benchmarks/suite_walltime.py [--suite suites/nightly.toml ...] [--modes cold,warm]
        [--cache DIR] [--only OP,...] [--store DIR] [--json FILE]

cold: the run starts from an empty cache folder (SM120_HARNESS_CACHE: every JIT cache and the input
cache); warm: the next run with the folder the previous one left. Without --cache each profile gets a
temporary folder; with it, `--modes warm` alone reuses what an earlier command left there (a device
command of 10 minutes may not hold both). Prints the table profile x mode x seconds, then per profile
and mode the seconds of each op by part (the run's wall_*_s rows), and writes it all as JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.profile import load_profile
from harness.results.store import load_run

# (profile, mode, machine) -> seconds
TARGETS = {
    ("nightly", "cold", "gpu"): 600.0,
    ("nightly", "warm", "gpu"): 300.0,
    ("pr", "warm", "gpu"): 180.0,
    ("smoke", "cold", "cpu"): 120.0,
    ("smoke", "warm", "cpu"): 120.0,
}
PARTS = ("startup", "inputs", "jit", "golden", "call", "timing", "drift")


def per_op(run) -> dict[str, dict[str, float]]:
    """op -> seconds per part, summed over its paths; `golden` is the goldens' calls, `call` the
    implementations'; `total` the sum of its units' wall seconds (concurrent on several slots)."""
    m = run.measurements
    w = m[(m["suite"] == "kernels") & m["metric"].str.match(r"^wall_[a-z]+_s$")]
    out: dict[str, dict[str, float]] = {}
    for op, metric, value, detail in zip(w["case"], w["metric"], w["value"], w["detail"]):
        part = metric[len("wall_") : -len("_s")]
        if part == "call" and json.loads(detail or "{}").get("golden"):
            part = "golden"
        row = out.setdefault(op, dict.fromkeys(("total", *PARTS), 0.0))
        row[part] = row.get(part, 0.0) + float(value)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total"]))


def run_once(suite: str | None, cache: Path, store: Path, only: str | None) -> dict:
    cmd = [sys.executable, "-m", "harness", "run", "--store", str(store)]
    cmd += ["--suite", suite] if suite else []
    cmd += ["--only", only] if only else []
    before = {d.name for d in store.iterdir()} if store.exists() else set()
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env={**os.environ, "SM120_HARNESS_CACHE": str(cache)}).returncode
    wall = time.perf_counter() - t0
    new = sorted({d.name for d in store.iterdir()} - before)
    run = load_run(store / new[-1])
    gpu = run.manifest["fingerprint"]["gpu"]
    schedule = run.manifest.get("schedule", {})
    return {
        "run_id": run.run_id,
        "exit_code": rc,
        "wall_s": round(wall, 1),
        "kernels_s": round(schedule.get("makespan_s", float("nan")), 1),
        "machine": "gpu" if gpu.get("count") else "cpu",
        "gpu": gpu.get("names"),
        "slots": schedule.get("slots"),
        "busy_s": schedule.get("busy_s"),
        "cache": run.manifest.get("cache"),
        "per_op": per_op(run),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", action="append", help="profile (repeatable; default: suites/smoke.toml)")
    ap.add_argument("--modes", default="cold,warm", help="cold, warm or both (default: cold,warm)")
    ap.add_argument("--cache", type=Path, help="cache folder (default: a temporary one per profile)")
    ap.add_argument("--only", help="comma-separated op names")
    ap.add_argument("--store", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"cold", "warm"}:
        ap.error(f"--modes: cold and/or warm, got {args.modes!r}")
    store = args.store or Path(tempfile.mkdtemp(prefix="sm120-walltime-"))
    results = []
    for suite in args.suite or [None]:
        name = load_profile(suite).name if suite else "smoke"
        cache = args.cache or Path(tempfile.mkdtemp(prefix=f"sm120-walltime-cache-{name}-"))
        for mode in modes:
            if mode == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            r = run_once(suite, cache, store, args.only)
            r.update(profile=name, mode=mode, only=args.only)
            r["target_s"] = TARGETS.get((name, mode, r["machine"]))
            results.append(r)
            print(f"{name} {mode}: {r['wall_s']} s (exit {r['exit_code']})", file=sys.stderr, flush=True)
    print(f"\n{'profile':<10} {'mode':<5} {'machine':<8} {'seconds':>8} {'kernels':>8} {'target':>7}  verdict")
    for r in results:
        target = r["target_s"]
        verdict = "" if target is None else ("met" if r["wall_s"] <= target else "MISSED")
        print(
            f"{r['profile']:<10} {r['mode']:<5} {r['machine']:<8} {r['wall_s']:>8.1f} {r['kernels_s']:>8.1f} "
            f"{target or '-':>7}  {verdict}"
        )
    for r in results:
        print(f"\n{r['profile']} {r['mode']} ({r['run_id']}; slots busy {r['busy_s']}): seconds per op")
        print(f"{'op':<20} {'total':>7}" + "".join(f" {p:>8}" for p in PARTS))
        for op, p in r["per_op"].items():
            print(f"{op:<20} {p['total']:>7.1f}" + "".join(f" {p[k]:>8.1f}" for k in PARTS))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

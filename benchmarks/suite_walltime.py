"""Wall time of a whole kernel-suite run, JIT warm-up and worker start-up included.

Target (issue: kernel parity engine): the whole MLA case grid on one GPU in under 2 minutes.

    python benchmarks/suite_walltime.py [--suite suites/smoke.toml] [--only mla_sparse_decode] [--json FILE]

Prints the wall time of `sm120-harness run`, then, from the run it stored, the seconds each path spent
(the first case of a path carries its import, JIT and autotuning)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.store import list_runs

TARGET_S = 120.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default=None)
    ap.add_argument("--only", default="mla_sparse_decode")
    ap.add_argument("--store", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="sm120-walltime-"))
    cmd = [sys.executable, "-m", "harness", "run", "--store", str(store), "--only", args.only]
    if args.suite:
        cmd += ["--suite", args.suite]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    run = max(list_runs(store), key=lambda r: r.manifest["started_at"])
    outcome = run.measurements[run.measurements["metric"] == "outcome"]
    per_path = {}
    for impl, g in outcome.groupby("impl", sort=False):
        ran = g[g["status"] == "ok"]
        per_path[impl] = {
            "cases": int(len(g)),
            "ok": int(len(ran)),
            "seconds": float(ran["value"].sum()),
            "first_case_s": float(ran["value"].iloc[0]) if len(ran) else None,
        }
    result = {
        "run_id": run.run_id,
        "exit_code": rc,
        "wall_s": round(wall, 2),
        "target_s": TARGET_S,
        "gpu": run.manifest["fingerprint"]["gpu"].get("names"),
        "per_path": per_path,
    }
    print(json.dumps(result, indent=2))
    print(
        f"wall time {wall:.1f} s (target {TARGET_S:.0f} s on one GPU): {'met' if wall <= TARGET_S else 'MISSED'}",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

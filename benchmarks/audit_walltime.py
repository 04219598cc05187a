"""Wall time of the SM120 audit on a machine without a GPU, capture, compilation and launch evaluation
included.

Target (issue: the SM120 audit beyond Triton): the default profile in under 5 minutes on a CPU.

    python benchmarks/audit_walltime.py [--suite suites/smoke.toml] [--cold] [--json FILE]

`--cold` audits with an empty build cache (a fresh CI machine); without it the user's cache is used,
as on a developer's machine the second time. Prints the wall time, the exit code, and the findings
per kernel kind with their worst shared memory."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.results.store import list_runs

TARGET_S = 300.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default=None)
    ap.add_argument("--cold", action="store_true", help="an empty build cache")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    store = Path(tempfile.mkdtemp(prefix="sm120-audit-walltime-"))
    env = dict(os.environ)
    if args.cold:
        env["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sm120-audit-cache-")
    cmd = [sys.executable, "-m", "harness", "audit", "--store", str(store)]
    if args.suite:
        cmd += ["--suite", args.suite]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env).returncode
    wall = time.perf_counter() - t0
    run = max(list_runs(store), key=lambda r: r.manifest["started_at"])
    m = run.measurements
    shared = m[(m["metric"] == "shared_bytes") & (m["status"] == "ok")]
    kinds: dict[str, dict] = {}
    for case, value, detail in zip(shared["case"], shared["value"], shared["detail"]):
        kind = json.loads(detail or "{}").get("kind", "?")
        k = kinds.setdefault(kind, {"kernels": 0, "worst_shared_bytes": 0.0, "worst": None})
        k["kernels"] += 1
        if value > k["worst_shared_bytes"]:
            k["worst_shared_bytes"], k["worst"] = float(value), case
    result = {"wall_s": wall, "target_s": TARGET_S, "exit": rc, "cold": args.cold, "kinds": kinds, "run": run.run_id}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if wall <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Capture-then-replay check on a GPU where the goldens run: run a profile with live goldens and
again with stored ones only, and report whether every drift figure is the same.

    python benchmarks/replay_check.py --suite suites/pr.toml --golden-dir DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.results.store import list_runs


def drift(store: Path) -> dict:
    (run,) = list_runs(store)
    m = run.measurements
    m = m[~m["metric"].isin(["outcome", "time_us", "gbps", "tflops", "roofline_frac", "time_ratio"])]
    m = m[~m["metric"].str.startswith("wall_")]  # where the seconds went, not a figure of the kernels
    return {
        f"{c}|{i}|{r}|{k}": v for c, i, r, k, v in zip(m["case"], m["impl"], m["reference"], m["metric"], m["value"])
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--golden-dir", required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sm120-replay-"))
    figures = {}
    for source in ("live", "stored"):
        cmd = [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--suite",
            args.suite,
            "--store",
            str(tmp / source),
            "--golden-dir",
            args.golden_dir,
            "--golden-source",
            source,
        ]
        subprocess.run(cmd, capture_output=True, text=True)
        figures[source] = drift(tmp / source)
    live, stored = figures["live"], figures["stored"]
    differ = sorted(
        k for k in live if stored.get(k) != live[k] and not (live[k] != live[k] and stored.get(k) != stored.get(k))
    )
    result = {
        "figures_live": len(live),
        "figures_stored": len(stored),
        "differ": differ[:50],
        "n_differ": len(differ),
        "golden_references": sorted({k.split("|")[2] for k in live if k.split("|")[2] not in ("fp64", "None")}),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if not differ and live else 1


if __name__ == "__main__":
    raise SystemExit(main())

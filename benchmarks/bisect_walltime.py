"""Time a bisect over 8 commits: a git history of SGLang's hash_topk Triton kernel (the installed
SGLang's sources, tests/sglang_history.py) with the module deleted at the middle commit and restored,
and a numeric fault planted two commits later; `sm120-harness bisect` over it with hash_topk's tiny
case (under Triton's interpreter without a GPU, compiled on one). Prints the wall time and the CPU
seconds (the wall time depends on what else the machine runs), the steps, and whether the fault's
commit was named.

    python benchmarks/bisect_walltime.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/sglang_history.py builds the history

from tests.sglang_history import PROFILE, build  # noqa: E402

CHANGES = ["touch", "touch", "touch", "delete", "restore", "fault", "touch", "touch"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="build the history and the store here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bisect-walltime-") as tmp:
        where = args.keep or Path(tmp)
        shas = build(where / "sglang", CHANGES)
        profile = where / "bisect.toml"
        profile.write_text(PROFILE)
        argv = ["bisect", shas[0], shas[-1], "--sglang-src", str(where / "sglang"), "--suite", str(profile)]
        argv += ["--store", str(where / "runs"), "--json"]
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=ROOT, capture_output=True, text=True)
        wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        if r.returncode != 0:
            print(r.stderr[-4000:], file=sys.stderr)
            print(f"bisect exited with code {r.returncode}", file=sys.stderr)
            return 1
        result = json.loads(r.stdout)
    fault = shas[1 + CHANGES.index("fault")]
    # the steps' processes run one after another: on an idle machine the wall time is about the CPU time
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{len(CHANGES)} commits after GOOD, {len(result['steps'])} runs, {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"{os.cpu_count()} cores, load average {load}")
    for s in result["steps"]:
        print(f"  {s['verdict']:<4}  {s['commit'][:12]}  {s['seconds']:>5.1f} s  {s['subject']}")
    named = result["first_bad"] == fault
    print(f"first bad commit: {(result['first_bad'] or 'none')[:12]} ({'the fault' if named else 'NOT the fault'})")
    return 0 if named else 1


if __name__ == "__main__":
    raise SystemExit(main())

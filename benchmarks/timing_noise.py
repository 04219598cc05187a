"""How repeatable a kernel timing is: one kernel timed in N separate processes (default 10), each
with the harness's own timing (warm-up, CUDA graph, L2 flushed, R repeats, median); reported as the
coefficient of variation of the N medians. Target: at most 1% for kernels of 20 us and more.

    python benchmarks/timing_noise.py [--op mla_sparse_decode] [--path sglang.triton]
        [--case b32_h64_swa128_c4x512] [--runs 10] [--repeats 100] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from harness.content import content_dir


def one(op_file: str, path: str, case: str, repeats: int) -> dict:
    """In this process: time `path` on `case` once, the way a kernel-suite run does."""
    from harness.parity.catalogue import load_op_file
    from harness.parity.inputs import build_inputs, to_device
    from harness.parity.roofline import time_cuda

    op = load_op_file(Path(op_file))
    c, p = op.cases()[case], op.paths[path]
    inputs = to_device(build_inputs(op.module, op.name, c, 0), "cuda")
    fn = p.timed(inputs, c) if p.timed else (lambda: p.run(inputs, c))
    t = time_cuda(fn, repeats=repeats, warmup=10)
    return {"median_us": t.median_us, "iqr_us": t.iqr_us, "mode": t.mode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--op", default="mla_sparse_decode")
    ap.add_argument("--path", default="sglang.triton")
    ap.add_argument("--case", default="b32_h64_swa128_c4x512")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    op_file = str(content_dir("kernels") / f"{args.op}.py")
    if args.child:
        print(json.dumps(one(op_file, args.path, args.case, args.repeats)))
        return 0
    runs = []
    for i in range(args.runs):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--op",
            args.op,
            "--path",
            args.path,
            "--case",
            args.case,
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"run {i + 1}/{args.runs}: median {runs[-1]['median_us']:.2f} us ({runs[-1]['mode']})", file=sys.stderr)
    medians = [r["median_us"] for r in runs]
    mean = statistics.fmean(medians)
    result = {
        "op": args.op,
        "path": args.path,
        "case": args.case,
        "runs": args.runs,
        "repeats": args.repeats,
        "medians_us": medians,
        "mean_us": mean,
        "cv": statistics.stdev(medians) / mean,
        "mode": runs[0]["mode"],
    }
    print(json.dumps(result, indent=2))
    print(f"CV of the median over {args.runs} runs: {100 * result['cv']:.2f}% at {mean:.1f} us", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

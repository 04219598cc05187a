"""Render the site over a year of nightly runs: 365 synthetic runs of the MLA grid (18 cases, 5 paths,
drift and timing rows each), then time `sm120-harness report`. Target: under 10 s.

    python benchmarks/report_365.py [--runs 365] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from harness.pages.site import build
from harness.results.store import RunWriter, row

PATHS = ["fp64", "flashinfer.fa2", "flashmla.legacy", "sglang.triton", "sglang.torch"]


def synthetic_run(store: Path, day: int, rng: random.Random) -> None:
    w = RunWriter.create(
        store,
        {
            "profile": {"name": "nightly", "file": "suites/nightly.toml"},
            "fingerprint": {
                "gpu": {"count": 1, "names": ["NVIDIA RTX PRO 6000"]},
                "sglang_commit": f"{rng.getrandbits(160):040x}",
            },
            "git": {"branch": "main", "message": f"nightly {day} <script>alert(1)</script>"},
        },
    )
    w.manifest["started_at"] = f"2026-{1 + day // 31 % 12:02d}-{1 + day % 28:02d}T02:00:{day % 60:02d}+00:00"
    rows = []
    for b in (1, 8, 32, 128):
        for h in (64, 32):
            for variant in ("swa128_c4x512", "topk512"):
                case = f"mla_sparse_decode/b{b}_h{h}_{variant}"
                for p in PATHS:
                    rows.append(row(w.run_id, "kernels", case, "v1", p, "outcome", rng.random(), unit="s"))
                    if p == "fp64":
                        continue
                    for metric in ("calc_diff", "worst_row_calc_diff", "max_abs", "cosine"):
                        rows.append(
                            row(w.run_id, "kernels", case, "v1", p, metric, 1e-6 * (1 + rng.random()), reference="fp64")
                        )
                    samples = [100 * b * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(50)]
                    rows.append(
                        row(
                            w.run_id,
                            "kernels",
                            case,
                            "v1",
                            p,
                            "time_us",
                            sorted(samples)[25],
                            unit="us",
                            samples=samples,
                        )
                    )
                    rows.append(row(w.run_id, "kernels", case, "v1", p, "roofline_frac", rng.random(), better="higher"))
    w.add(rows)
    w.finish("complete")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=365)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="sm120-report-"))
    rng = random.Random(0)
    t0 = time.perf_counter()
    for day in range(args.runs):
        synthetic_run(root / "runs", day, rng)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    build(root / "runs", root / "site")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    build(root / "runs", root / "site")  # run pages exist already: what a nightly re-render costs
    again = time.perf_counter() - t0
    result = {
        "runs": args.runs,
        "make_s": round(made, 1),
        "render_s": round(first, 2),
        "rerender_s": round(again, 2),
        "target_s": 10.0,
        "site": str(root / "site"),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""False alarms and power of the comparison: a timed profile run N times on one machine with nothing
changed (A/A), every pair compared; then a planted 5% slowdown of one path (tests/ops/planted_slowdown.py:
the same kernel launched 21 times instead of 20), run M times and compared with each unchanged run.

Reports, by metric and by family (timing rows: time_us and what is derived from it; drift rows: figures
computed once on identical inputs), the share of A/A rows whose verdict is not `same` (target: at most
1% of timing rows, none of drift rows), the share of A/A pairs the gate fails, and the power: the share
of (unchanged, slowed) pairs in which the planted path's time_us is `regressed` (target: 95%).

On a GPU the profile's GPU cases are timed with CUDA events; on a CPU, with `on_cpu` timing, the
wall time of the Triton interpreter and PyTorch's CPU kernels (a test of the statistics, not of any
kernel's speed).

    python benchmarks/aa_rate.py [--suite suites/pr.toml] [--only hash_topk,kv_dequant] [--n 10]
        [--slowed 10] [--slowdown 1.05] [--repeats 50] [--store DIR] [--json FILE] [--budget-s S]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tests" / "ops" / "planted_slowdown.py"


def _toml(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)  # strings, numbers and lists of them read the same in TOML


def timed_profile(suite: Path, ops: list[str], repeats: int, out: Path) -> Path:
    """`suite`'s kernel cases and op selections, timed, plus the planted op."""
    from harness.profile import load_profile

    p = load_profile(suite)
    k = p.kernels
    if k is None:
        raise SystemExit(f"{suite}: no [kernels] section to time")
    lines = [f'name = "aa-{p.name}"', "[kernels]", f"cases = {_toml(k.cases)}", f"timeout_s = {k.timeout_s}"]
    lines.append(f"timing = {_toml({'repeats': repeats, 'warmup': 5, 'cuda_graph': True, 'on_cpu': True})}")
    chosen = k.ops if k.ops is not None else {name: None for name in ops}
    for name in ops:
        if name not in chosen:
            raise SystemExit(f"--only: {name!r} is not in {suite}")
        cfg = chosen[name]
        lines.append(f"[kernels.ops.{name}]")
        for field in ("impls", "goldens", "cases", "ceilings"):
            v = getattr(cfg, field, None) if cfg is not None else None
            if v:
                lines.append(f"{field} = {_toml(v)}")
    lines += ["[kernels.ops.planted_slowdown]", 'cases = { cpu = ["tiny"], gpu = ["gpu"] }']
    out.write_text("\n".join(lines) + "\n")
    return out


def kernels_dir(tmp: Path) -> Path:
    """The op catalogue and the planted op, side by side."""
    d = tmp / "kernels"
    d.mkdir()
    for f in sorted((ROOT / "kernels").glob("*.py")):
        (d / f.name).symlink_to(f)
    (d / PLANTED.name).symlink_to(PLANTED)
    return d


def run(profile: Path, store: Path, kdir: Path, only: list[str], slowdown: float) -> str:
    cmd = [sys.executable, "-m", "harness", "run", "--suite", str(profile), "--store", str(store)]
    cmd += ["--kernels-dir", str(kdir), "--only", ",".join(only)]
    env = {**os.environ, "PLANTED_SLOWDOWN": str(slowdown)}
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    print(f"  run {r.stdout.strip()} ({'slowed' if slowdown != 1 else 'unchanged'}, {time.monotonic() - t0:.0f} s)")
    return r.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", type=Path, default=ROOT / "suites" / "pr.toml")
    ap.add_argument("--only", default="hash_topk,kv_dequant", help="comma-separated ops of the profile")
    ap.add_argument("--n", type=int, default=10, help="unchanged runs (A/A pairs: n(n-1)/2)")
    ap.add_argument("--slowed", type=int, help="runs of the planted slowdown (default: n)")
    ap.add_argument("--slowdown", type=float, default=1.05)
    ap.add_argument("--repeats", type=int, default=50, help="timing repeats per path and case")
    ap.add_argument("--store", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the report as JSON")
    ap.add_argument("--budget-s", type=float, help="start no run that would end past this many seconds")
    args = ap.parse_args()
    if args.n < 2:
        raise SystemExit("--n: at least 2 runs to make a pair")
    sys.path.insert(0, str(ROOT))
    from harness.profile import GateConfig
    from harness.results import metrics as M
    from harness.results.compare import compare
    from harness.results.gate import gate
    from harness.results.judge import breaches
    from harness.results.store import load_run

    ops = [o for o in args.only.split(",") if o]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aa-rate-") as tmp:
        tmp = Path(tmp)
        store = args.store or tmp / "runs"
        profile = timed_profile(args.suite, ops, args.repeats, tmp / "aa.toml")
        kdir = kernels_dir(tmp)
        m = args.slowed if args.slowed is not None else args.n
        print(f"{args.n} unchanged runs of {','.join(ops)} + planted_slowdown, {m} slowed x{args.slowdown}")
        # interleaved, so a drift of the machine over time (clocks, heat) falls on both sides alike
        plan = [(True, i) for i in range(args.n)] + [(False, i) for i in range(m)]
        plan.sort(key=lambda p: p[1] / (args.n if p[0] else m))
        same, slowed, took = [], [], {True: 0.0, False: 0.0}
        for unchanged, _ in plan:
            if args.budget_s and time.monotonic() - t0 + took[unchanged] > args.budget_s and len(same) >= 2 and slowed:
                print(f"  stopping: the next run would pass --budget-s {args.budget_s:g}")
                break
            t1 = time.monotonic()
            if unchanged:
                same.append(run(profile, store, kdir, [*ops, "planted_slowdown"], 1.0))
            else:
                slowed.append(run(profile, store, kdir, ["planted_slowdown"], args.slowdown))
            took[unchanged] = time.monotonic() - t1
        runs = {rid: load_run(store / rid) for rid in same + slowed}

        rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # metric -> [judged rows, not same]
        alarms, gate_fails = [], 0
        for a, b in itertools.combinations(same, 2):
            c = compare(runs[a].measurements, runs[b].measurements)
            c = c[c["metric"] != M.OUTCOME]  # wall seconds with JIT: never judged
            for _, r in c.iterrows():
                rows[r["metric"]][0] += 1
                if r["verdict"] != "same":
                    rows[r["metric"]][1] += 1
                    keep = ("case", "impl", "reference", "metric", "verdict", "reason")
                    alarms.append({"pair": [a, b], **{k: r[k] for k in keep}})
            found = gate(runs[a].measurements, runs[b].measurements, breaches(runs[b]), GateConfig(),
                         baseline_breaches=breaches(runs[a]))  # fmt: skip
            gate_fails += any(f.failing for f in found)
        flagged, pairs = 0, 0
        for a, b in itertools.product(same, slowed):
            c = compare(runs[a].measurements, runs[b].measurements)
            t = c[(c["case"].str.startswith("planted_slowdown/")) & (c["metric"] == M.TIME_US)]
            pairs += len(t)
            flagged += int((t["verdict"] == "regressed").sum())
    by_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for metric, (n, bad) in rows.items():
        fam = "timing" if M.family(metric) in (M.TIMING, M.RATE) else M.family(metric)
        by_family[fam][0] += n
        by_family[fam][1] += bad
    n_pairs = len(same) * (len(same) - 1) // 2

    def shares(counts: dict[str, list[int]]) -> dict:
        return {k: {"rows": n, "not_same": bad, "share": bad / n} for k, (n, bad) in counts.items()}

    report = {
        "suite": str(args.suite),
        "ops": ops,
        "runs": {"unchanged": len(same), "slowed": len(slowed), "aa_pairs": n_pairs},
        "repeats": args.repeats,
        "device": (runs[same[0]].manifest.get("fingerprint", {}).get("gpu") or {}).get("names") or ["cpu"],
        "aa_not_same_by_metric": shares(rows),
        "aa_not_same_by_family": shares(by_family),
        "aa_gate_failing_pairs": {"pairs": n_pairs, "failing": gate_fails},
        "power": {"slowdown": args.slowdown, "pairs": pairs, "flagged": flagged, "share": flagged / max(pairs, 1)},
        "alarms": alarms[:200],
        "seconds": round(time.monotonic() - t0),
    }
    print(f"\nA/A, {n_pairs} pairs: share of rows not `same` (target: timing <= 1%, drift 0)")
    for f, (n, bad) in sorted(by_family.items()):
        print(f"  {f:<10} {bad:>6} of {n:>7}  {bad / n:.2%}")
    for m, (n, bad) in sorted(rows.items()):
        print(f"    {m:<28} {bad:>6} of {n:>7}  {bad / n:.2%}")
    print(f"gate A/A: {gate_fails} of {n_pairs} pairs fail")
    share = f"{flagged / pairs:.1%}" if pairs else "-"
    print(f"power: a {args.slowdown - 1:+.0%} slowdown flagged in {flagged} of {pairs} pairs ({share}; target 95%)")
    print(f"{report['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The smoke profile over a series of SGLang releases: what moved, what is absent, what fails.

    python benchmarks/release_series.py [--versions 0.5.18,0.5.20,0.5.21,0.5.22,0.5.23] [--sources DIR]
        [--suite suites/smoke.toml] [--only OP,...] [--store DIR] [--json FILE]

Each release's wheel is fetched with `pip download --no-deps sglang==V` into DIR (default: the user's cache,
sm120-harness/sglang-releases) and unzipped there once; then `sm120-harness run` runs against its sources
(SM120_HARNESS_SGLANG_SRC) in a process of its own. Prints, per release: the (path x case) counts by status
(ok, skipped, of which environment conflicts, absent, failed), the kernel groups covered / in part / not by
what that release has, and every failure and absence with its reason. A failure that is a missing function or
an import conflict is a bug of the harness (it must be `absent` or `skipped(environment: ...)`)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.results.store import FAILURES, list_runs

VERSIONS = ("0.5.18", "0.5.20", "0.5.21", "0.5.22", "0.5.23")


def sources(version: str, folder: Path) -> Path:
    """The unzipped sources of SGLang `version` (the folder that holds `sglang/`)."""
    dest = folder / version
    if (dest / "sglang" / "__init__.py").is_file():
        return dest
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"sglang=={version}", "-d", str(wheels)]
    subprocess.run(cmd, check=True)
    (wheel,) = wheels.glob(f"sglang-{version}-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest)
    return dest


def measure(version: str, src: Path, store: Path, suite: str, only: str | None) -> dict:
    env = {**os.environ, "SM120_HARNESS_SGLANG_SRC": str(src)}
    cmd = [sys.executable, "-m", "harness", "run", "--suite", suite, "--store", str(store / version)]
    cmd += ["--only", only] if only else []
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (run,) = list_runs(store / version)[-1:]
    m = run.measurements
    o = m[m["metric"] == "outcome"]
    kinds = o["status"].str.split("(").str[0]
    counts = collections.Counter(kinds)
    environment = int(o["status"].str.startswith("skipped(environment:").sum())
    cov = [json.loads(d)["status"] for d in m.loc[m["suite"] == "coverage", "detail"]]
    notes = sorted(
        {
            f"{c.split('/')[0]} {i}: {s}" + (f" {json.loads(d).get('error', '')[:160]}" if s in FAILURES else "")
            for c, i, s, d in zip(o["case"], o["impl"], o["status"], o["detail"])
            if s in FAILURES or s.startswith("absent") or s.startswith("skipped(environment:")
        }
    )
    return {
        "version": version,
        "exit": r.returncode,
        "ok": counts.get("ok", 0),
        "skipped": counts.get("skipped", 0),
        "environment": environment,
        "absent": counts.get("absent", 0),
        "failed": sum(counts.get(s, 0) for s in FAILURES),
        "groups": "/".join(str(cov.count(s)) for s in ("covered", "partial", "not")) if cov else "-",
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", default=",".join(VERSIONS))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sm120-harness" / "sglang-releases"
    ap.add_argument("--sources", type=Path, default=cache)
    ap.add_argument("--suite", default="suites/smoke.toml")
    ap.add_argument("--only")
    ap.add_argument("--store", type=Path, default=Path("runs-release-series"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [measure(v, sources(v, args.sources), args.store, args.suite, args.only) for v in args.versions.split(",")]
    head = ("sglang", "exit", "ok", "skipped", "of which environment", "absent", "failed", "groups c/p/n")
    print("  ".join(head))
    for r in rows:
        keys = ("version", "exit", "ok", "skipped", "environment", "absent", "failed", "groups")
        cells = [r[k] for k in keys]
        print("  ".join(str(c).ljust(len(h)) for c, h in zip(cells, head)))
    for r in rows:
        for note in r["notes"]:
            print(f"{r['version']}: {note}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""sm120-harness: the command line. It parses arguments into a request of the engine (harness/run.py,
harness/jobs.py, harness/history/bisect.py), prints what a command answers, and maps the result to an
exit code: 0 pass; 1 a ceiling crossed, a path failed, the gate failed; 2 usage or configuration error;
3 infrastructure failure; 130 interrupted."""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from harness import jobs
from harness import run as engine
from harness.content import content_dir
from harness.history.bisect import BisectError, StepError, bisect, summary
from harness.pages.console import ClosableStdout, coverage_table, line_coverage_table, registry_lines, runs_table
from harness.pages.site import build as build_site
from harness.parity.arch_gates import table as arch_gates_table
from harness.results.compare import summary_counts, to_markdown
from harness.results.store import StoreError, atomic_write, list_runs


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sm120-harness", description="SGLang's DeepSeek-V4 paths on SM120, validated")
    sub = ap.add_subparsers(dest="command")
    store = argparse.ArgumentParser(add_help=False)  # every command reads or writes a store
    store.add_argument("--store", default="runs", help="run store: a folder or an fsspec URL (default: ./runs)")
    run = sub.add_parser("run", parents=[store], help="run a suite profile into the store (default: suites/smoke.toml)")
    run.add_argument("--suite", type=Path, help="profile TOML (default: suites/smoke.toml)")
    run.add_argument("--kernels-dir", type=Path, help="folder of op files (default: kernels/)")
    run.add_argument("--only", help="comma-separated op names")
    run.add_argument("--json", action="store_true", help="print the run's manifest and measurements on stdout")
    audit = sub.add_parser("audit", help="the Triton, JIT CUDA and TileLang kernels of the SM120 paths, checked")
    golden = sub.add_parser("golden", help="stored goldens").add_subparsers(dest="golden_command", required=True)
    capture = golden.add_parser("capture", help="run the goldens of a profile where they run and store their outputs")
    for a in run._actions[1:]:  # the same options as `run` (its --store included)
        audit._add_action(a)
        capture._add_action(a)
    capture.add_argument("--out", type=Path, required=True, help="golden folder to write (e.g. golden/)")
    run.add_argument("--golden-dir", type=Path, help="stored goldens (default: golden/)")
    run.add_argument(
        "--golden-source",
        choices=("auto", "live", "stored"),
        default="auto",
        help="auto: a golden runs live where it can, else from the store (default)",
    )
    run.add_argument("--server-url", help="attach the serving suites to this running SGLang server")
    run.add_argument("--data-dir", type=Path, help="folder with GSM8K's test.jsonl and train.jsonl (offline)")
    run.add_argument("--resume", metavar="RUN", help="continue this run: skip what it already measured")
    cmp = sub.add_parser(
        "compare", parents=[store], help="compare two runs (id, folder, latest, latest:<profile>, commit)"
    )
    cmp.add_argument("baseline")
    cmp.add_argument("candidate")
    cmp.add_argument("--all", action="store_true", help="list unchanged rows too")
    cmp.add_argument("--json", action="store_true", help="every aligned row, as JSON on stdout")
    cmp.add_argument("--md", type=Path, help="write the changed rows as Markdown")
    cmp.add_argument("--html", type=Path, help="write the comparison as an HTML page")
    gate = sub.add_parser(
        "gate", parents=[store], help="fail a candidate run against a baseline and the profile's thresholds"
    )
    gate.add_argument("--baseline", required=True)
    gate.add_argument("--candidate", default="latest")
    gate.add_argument("--suite", type=Path, help="profile with the thresholds (default: the candidate's)")
    gate.add_argument("--kernels-dir", type=Path)
    report = sub.add_parser(
        "report", parents=[store], help="render the store as a static site (runs, comparison, history)"
    )
    report.add_argument("--out", type=Path, help="site folder (default: <store>/site)")
    report.add_argument("--kernels-dir", type=Path)
    nightly = sub.add_parser(
        "nightly", parents=[store], help="run a profile's suites, audit, gate against the last nightly, site"
    )
    nightly.add_argument("--suite", type=Path, required=True)
    nightly.add_argument("--kernels-dir", type=Path)
    nightly.add_argument("--site", type=Path, help="site folder (default: <store>/site)")
    nightly.add_argument("--server-url", help="attach the serving suites to this running SGLang server")
    nightly.add_argument("--data-dir", type=Path, help="folder with GSM8K's test.jsonl and train.jsonl (offline)")
    bis = sub.add_parser(
        "bisect", parents=[store], help="find the first SGLang commit between GOOD and BAD that fails the gate"
    )
    bis.add_argument("good", help="a commit that passes")
    bis.add_argument("bad", help="a later commit that fails")
    bis.add_argument("--sglang-src", type=Path, required=True, help="git checkout of SGLang (or its python/ folder)")
    bis.add_argument("--suite", type=Path, help="kernel profile (default: suites/pr.toml)")
    bis.add_argument("--only", help="comma-separated op names")
    bis.add_argument("--kernels-dir", type=Path)
    bis.add_argument("--json", action="store_true", help="the result and the steps as JSON on stdout")
    cov = sub.add_parser("coverage", help="the kernel groups DeepSeek-V4 runs on SM120, and which the op files check")
    cov.add_argument("--kernels-dir", type=Path)
    cov.add_argument(
        "--lines",
        action="store_true",
        help="run the default profile's CPU cases tracing SGLang: the lines of its Triton kernels they execute",
    )
    cov.add_argument("--only", help="with --lines: comma-separated op names")
    cov.add_argument(
        "--arch-gates",
        action="store_true",
        help="every compute-capability test on DeepSeek-V4's path, as SM90/SM100/SM120/SM121 answer it",
    )
    cov.add_argument("--all", action="store_true", help="with --arch-gates: every test, not only the flagged")
    runs = sub.add_parser("runs", parents=[store], help="list the runs of a store")
    runs.add_argument("--json", action="store_true")
    return ap


def _err(msg: str) -> None:
    print(f"sm120-harness: error: {msg}", file=sys.stderr)


def _request(args) -> engine.Request:
    return engine.Request(
        profile=args.suite,
        store=args.store,
        kernels_dir=args.kernels_dir,
        only=args.only.split(",") if args.only else None,
        what=engine.AUDIT if args.command == "audit" else engine.RUN,
        golden_dir=getattr(args, "golden_dir", None),
        golden_source=getattr(args, "golden_source", "auto"),
        server_url=getattr(args, "server_url", None),
        data_dir=getattr(args, "data_dir", None),
        resume=getattr(args, "resume", None),
    )


def _finished(outcome: engine.Outcome, as_json: bool) -> int:
    outcome_json = {"run": outcome.run.manifest, "exit_code": outcome.code}
    if as_json:
        rows = json.loads(outcome.run.measurements.to_json(orient="records"))
        print(json.dumps({**outcome_json, "measurements": rows}, default=str))
    else:
        print(outcome.run.run_id)
    return outcome.code


def cmd_run(args) -> int:
    if args.command == "golden":
        return _finished(jobs.capture_goldens(_request(args), args.out), args.json)
    return _finished(engine.execute(_request(args)), args.json)


def cmd_compare(args) -> int:
    c = jobs.compare_runs(args.store, args.baseline, args.candidate)
    md = to_markdown(c.rows, c.title) + c.runs + c.moved
    shown = c.rows if args.all else c.rows[c.rows["verdict"] != "same"]
    if args.md:
        atomic_write(args.md, (md + "\n").encode())
    if args.html:
        title = html.escape(c.title)
        page = f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
        page += f"<p>{html.escape(str(summary_counts(c.rows)))}</p>" + shown.to_html(index=False, na_rep="")
        atomic_write(args.html, (page + (f"<pre>{html.escape(c.moved)}</pre>" if c.moved else "")).encode())
    print(c.rows.to_json(orient="records") if args.json else (shown.to_string(index=False) if args.all else md))
    return engine.EXIT_OK


def cmd_gate(args) -> int:
    result = jobs.gate_runs(args.store, args.baseline, args.candidate, args.suite, args.kernels_dir)
    print(result.markdown)
    return engine.EXIT_GATE if result.failing else engine.EXIT_OK


def cmd_nightly(args) -> int:
    n = jobs.nightly(
        args.suite,
        args.store,
        kernels_dir=args.kernels_dir,
        site=args.site,
        server_url=args.server_url,
        data_dir=args.data_dir,
    )
    for o in n.runs:
        print(o.run.run_id)
    if n.gate is not None:
        print(n.gate.markdown)
    if n.site is not None:
        print(n.site)
    return n.code


def cmd_bisect(args) -> int:
    """Exit: 0 the first bad commit named; 1 skipped commits left it one of several; 2 the range cannot
    be bisected (BAD passes, GOOD runs nothing, not a checkout); 3 a step could not run; 130 interrupted."""
    try:
        record = bisect(
            args.sglang_src,
            args.good,
            args.bad,
            store=args.store,
            suite=args.suite or content_dir("suites") / "pr.toml",
            only=args.only.split(",") if args.only else None,
            kernels_dir=args.kernels_dir,
        )
    except KeyboardInterrupt:
        return engine.EXIT_INTERRUPTED
    print(json.dumps(record, default=str) if args.json else summary(record))
    return engine.EXIT_OK if record["first_bad"] else engine.EXIT_GATE


def cmd_runs(args) -> int:
    runs = list_runs(args.store)
    print(json.dumps([r.manifest for r in runs], indent=2, default=str) if args.json else runs_table(runs))
    return engine.EXIT_OK


def cmd_coverage(args) -> int:
    if args.lines:
        lines = jobs.triton_line_coverage(args.kernels_dir, args.only.split(",") if args.only else None)
        print(line_coverage_table(lines.files))
        return engine.EXIT_OK
    if args.arch_gates:
        gates = jobs.arch_gates(args.kernels_dir)
        print(arch_gates_table(gates.sites, flagged_only=not args.all))
        for module in gates.unread:
            print(f"not read: {module}")
        return engine.EXIT_OK
    c = jobs.kernel_coverage(args.kernels_dir)
    if c.inventory is None:
        raise engine.UsageError(f"no inventory in {args.kernels_dir or 'kernels'}/inventory/")
    read = c.inventory.stem.removeprefix("sglang-")
    against = "" if read == c.sglang else f" (no inventory of {c.sglang or 'this version'}: {read}'s, read against it)"
    print(f"SGLang {c.sglang}: {c.inventory}{against}\n\n{coverage_table(c.groups)}")
    for op, functions in c.unknown.items():
        print(f"{op} covers what the inventory does not list: {', '.join(functions)}")
    if c.registry is not None:
        print("\n" + registry_lines(c.registry))
    else:
        print(f"\nkernel registry: {c.registry_error or 'none in these sources'}")
    return engine.EXIT_OK


def cmd_report(args) -> int:
    print(build_site(args.store, args.out or jobs.default_site(args.store), args.kernels_dir))
    return engine.EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "audit": cmd_run,
    "golden": cmd_run,
    "compare": cmd_compare,
    "gate": cmd_gate,
    "nightly": cmd_nightly,
    "coverage": cmd_coverage,
    "bisect": cmd_bisect,
    "report": cmd_report,
    "runs": cmd_runs,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        args = _parser().parse_args(["run", *(argv or [])])
    sys.stdout = ClosableStdout(sys.stdout)  # a reader that goes away never turns a failure into a pass
    try:
        return COMMANDS[args.command](args)
    except (engine.UsageError, BisectError) as exc:
        _err(str(exc))
        return engine.EXIT_USAGE
    except (engine.InfraError, StepError) as exc:
        _err(str(exc))
        return engine.EXIT_INFRA
    except StoreError as exc:  # a run or store named on the command line that is not there
        _err(str(exc))
        return engine.EXIT_INFRA if args.command == "bisect" else engine.EXIT_USAGE
    finally:
        sys.stdout = sys.stdout.restore()


if __name__ == "__main__":
    raise SystemExit(main())

"""sm120-harness: the command line.

Exit codes: 0 pass; 1 a ceiling crossed or a path failed/crashed/timed out; 2 usage or configuration
error; 3 infrastructure failure (the store cannot be written, no GPU where one is required);
130 interrupted (what was measured is kept, the run is marked `interrupted`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class _Terminated(BaseException):
    """SIGTERM, handled like ^C so the run is closed as `interrupted`."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sm120-harness", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a suite profile into the store (default: suites/smoke.toml into ./runs)")
    run.add_argument("--suite", type=Path, help="profile TOML (default: suites/smoke.toml)")
    run.add_argument("--store", default="runs", help="run store: a folder or an fsspec URL (default: ./runs)")
    run.add_argument("--kernels-dir", type=Path, help="folder of op files (default: kernels/)")
    run.add_argument("--only", help="comma-separated op names")
    run.add_argument("--json", action="store_true", help="print the run's manifest and measurements on stdout")
    audit = sub.add_parser("audit", help="compile every Triton kernel the SM120 paths launch for sm_120a and check it")
    golden = sub.add_parser("golden", help="stored goldens").add_subparsers(dest="golden_command", required=True)
    capture = golden.add_parser("capture", help="run the goldens of a profile where they run and store their outputs")
    for a in run._actions[1:]:  # the same options as `run`
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
    cmp = sub.add_parser(
        "compare", help="compare two runs (id, folder, latest, latest:<profile>, SGLang commit prefix)"
    )
    cmp.add_argument("baseline")
    cmp.add_argument("candidate")
    cmp.add_argument("--store", default="runs")
    cmp.add_argument("--all", action="store_true", help="list unchanged rows too")
    cmp.add_argument("--json", action="store_true", help="every aligned row, as JSON on stdout")
    cmp.add_argument("--md", type=Path, help="write the changed rows as Markdown")
    cmp.add_argument("--html", type=Path, help="write the comparison as an HTML page")
    gate = sub.add_parser("gate", help="fail a candidate run against a baseline and the profile's thresholds")
    gate.add_argument("--baseline", required=True)
    gate.add_argument("--candidate", default="latest")
    gate.add_argument("--suite", type=Path, help="profile with the thresholds (default: the candidate's)")
    gate.add_argument("--store", default="runs")
    gate.add_argument("--kernels-dir", type=Path)
    report = sub.add_parser("report", help="render the store as a static site (runs, comparison, history)")
    report.add_argument("--store", default="runs")
    report.add_argument("--out", type=Path, help="site folder (default: <store>/site)")
    report.add_argument("--kernels-dir", type=Path)
    nightly = sub.add_parser(
        "nightly", help="run a profile's suites, audit, gate against the last nightly, render the site"
    )
    nightly.add_argument("--suite", type=Path, required=True)
    nightly.add_argument("--store", default="runs")
    nightly.add_argument("--kernels-dir", type=Path)
    nightly.add_argument("--site", type=Path, help="site folder (default: <store>/site)")
    nightly.add_argument("--server-url", help="attach the serving suites to this running SGLang server")
    nightly.add_argument("--data-dir", type=Path, help="folder with GSM8K's test.jsonl and train.jsonl (offline)")
    bis = sub.add_parser("bisect", help="find the first SGLang commit between GOOD and BAD that fails the gate")
    bis.add_argument("good", help="a commit that passes")
    bis.add_argument("bad", help="a later commit that fails")
    bis.add_argument("--sglang-src", type=Path, required=True, help="git checkout of SGLang (or its python/ folder)")
    bis.add_argument("--suite", type=Path, help="kernel profile (default: suites/pr.toml)")
    bis.add_argument("--only", help="comma-separated op names")
    bis.add_argument("--store", default="runs")
    bis.add_argument("--kernels-dir", type=Path)
    bis.add_argument("--json", action="store_true", help="the result and the steps as JSON on stdout")
    runs = sub.add_parser("runs", help="list the runs of a store")
    runs.add_argument("--store", default="runs")
    runs.add_argument("--json", action="store_true")
    run.add_argument("--server-url", help="attach the serving suites to this running SGLang server")
    run.add_argument("--data-dir", type=Path, help="folder with GSM8K's test.jsonl and train.jsonl (offline)")
    run.add_argument("--resume", metavar="RUN", help="continue this run: skip what it already measured")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        args = _parser().parse_args(["run", *(argv or [])])
    try:
        if args.command in ("run", "audit", "golden"):
            return cmd_run(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "gate":
            return cmd_gate(args)
        if args.command == "nightly":
            return cmd_nightly(args)
        if args.command == "bisect":
            return cmd_bisect(args)
        if args.command == "report":
            from harness.report import build

            index = build(args.store, args.out or _site(args.store), args.kernels_dir)
            print(index)
            return EXIT_OK
        return cmd_runs(args)
    except BrokenPipeError:
        return EXIT_OK


def _site(store: str) -> Path:
    """The default site folder: beside the runs of a local store, else ./site."""
    from harness.store import is_url

    return Path("site") if is_url(store) else Path(store) / "site"


def _err(msg: str) -> None:
    print(f"sm120-harness: error: {msg}", file=sys.stderr)


def cmd_compare(args) -> int:
    import html

    from harness.compare import compare, summary_counts, to_markdown
    from harness.store import StoreError, atomic_write, resolve

    try:
        a, b = resolve(args.store, args.baseline), resolve(args.store, args.candidate)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_USAGE
    result = compare(a.measurements, b.measurements)
    title = f"{b.run_id} against {a.run_id}"
    moved = _attribution(args.store, a, b, result)
    md = to_markdown(result, title) + moved
    if args.md:
        atomic_write(args.md, (md + "\n").encode())
    if args.html:
        shown = result if args.all else result[result["verdict"] != "same"]
        page = (
            f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(str(summary_counts(result)))}</p>"
            + shown.to_html(index=False, escape=True, na_rep="")
            + (f"<pre>{html.escape(moved)}</pre>" if moved else "")
        )
        atomic_write(args.html, page.encode())
    if args.json:
        print(result.to_json(orient="records"))
    else:
        shown = result if args.all else result[result["verdict"] != "same"]
        print(md if not args.all else shown.to_string(index=False))
    return EXIT_OK


def _attribution(store: str, baseline, candidate, compared=None) -> str:
    """The kernels that moved when an end-to-end figure dropped (harness/attribution.py), as Markdown."""
    from harness.attribution import attribute, markdown
    from harness.store import StoreError, list_runs

    found = attribute(baseline.measurements, candidate.measurements, compared)
    others = []
    if found.drops and not all(found.kernel_rows):  # name the runs of the same commits that hold kernel rows
        try:
            others = [r.manifest for r in list_runs(store)]
        except StoreError:
            pass
    return markdown(found, (baseline.manifest, candidate.manifest), others)


def cmd_nightly(args) -> int:
    """The nightly job: the profile's run (kernels and/or serving) and, with kernels, the audit as two
    runs of the store; the run gated against the previous run of the same profile; then the site.
    Exit: the worst of the steps."""
    from harness.profile import ProfileError, load_profile
    from harness.report import build
    from harness.store import StoreError, list_runs

    try:
        profile = load_profile(args.suite)
    except ProfileError as exc:
        _err(str(exc))
        return EXIT_USAGE
    common = ["--suite", str(args.suite), "--store", str(args.store)]
    common += ["--kernels-dir", str(args.kernels_dir)] if args.kernels_dir else []
    serving = ["--server-url", args.server_url] if args.server_url else []
    serving += ["--data-dir", str(args.data_dir)] if args.data_dir else []
    before = {r.run_id for r in list_runs(args.store)}
    codes = [main(["run", *common, *serving])]
    if profile.kernels is not None:  # a serving-only profile has no kernels to audit
        codes.append(main(["audit", *common]))
    if EXIT_USAGE in codes or EXIT_INTERRUPTED in codes:
        return max(codes)
    try:
        mine = [
            r
            for r in list_runs(args.store)
            if r.manifest.get("profile", {}).get("name") == profile.name
            and "audit" not in r.manifest.get("suites", [])
            and "bisect" not in r.manifest  # a bisect's step measured some older commit
        ]
    except StoreError as exc:
        _err(str(exc))
        return EXIT_INFRA
    mine.sort(key=lambda r: r.manifest.get("started_at", ""))
    new = [r for r in mine if r.run_id not in before]
    old = [r for r in mine if r.run_id in before]
    if new and old:
        gate_args = ["gate", "--baseline", old[-1].run_id, "--candidate", new[-1].run_id, *common]
        codes.append(main(gate_args))
    print(build(args.store, args.site or _site(args.store), args.kernels_dir))
    return EXIT_INFRA if EXIT_INFRA in codes else max(codes)


def cmd_bisect(args) -> int:
    """Exit: 0 the first bad commit named; 1 skipped commits left it one of several; 2 the range cannot
    be bisected (BAD passes, GOOD runs nothing, not a checkout); 3 a step could not run; 130 interrupted."""
    from harness.bisect import BisectError, StepError, bisect, summary
    from harness.content import content_dir
    from harness.store import StoreError

    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    # SIGTERM between steps ends the bisect like ^C: worktrees removed, the record marked interrupted
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        record = bisect(
            args.sglang_src,
            args.good,
            args.bad,
            store=args.store,
            suite=args.suite or content_dir("suites") / "pr.toml",
            only=args.only.split(",") if args.only else None,
            kernels_dir=args.kernels_dir,
            say=say,
        )
    except BisectError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (StepError, StoreError) as exc:
        _err(str(exc))
        return EXIT_INFRA
    except KeyboardInterrupt:
        say("interrupted: the steps run so far are kept in the store")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(record, default=str))
    else:
        print(summary(record))
    return EXIT_OK if record["first_bad"] else EXIT_GATE


def cmd_gate(args) -> int:
    from harness import audit, judge
    from harness.catalogue import CatalogueError, discover
    from harness.content import content_dir
    from harness.gate import gate, markdown
    from harness.profile import ProfileError, load_profile, select
    from harness.store import StoreError, resolve

    try:
        base, cand = resolve(args.store, args.baseline), resolve(args.store, args.candidate)
        stored_profile = Path(cand.manifest.get("profile", {}).get("file", ""))
        suite = args.suite or (stored_profile if stored_profile.is_file() else content_dir("suites") / "smoke.toml")
        profile = load_profile(suite)
        limits = cand.manifest.get("limits")
        if not isinstance(limits, dict):  # a run from before its limits were stored: the profile's
            ops = discover(args.kernels_dir or content_dir("kernels"))
            has_gpu = bool((cand.manifest.get("fingerprint", {}).get("gpu") or {}).get("count"))
            limits = {s.op.name: {**audit.CEILINGS, **s.ceilings} for s in select(profile, ops, has_gpu=has_gpu)}
    except (StoreError, ProfileError, CatalogueError, FileNotFoundError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    # the baseline is held to the candidate's limits, so a limit it crossed too is told apart
    over, over_before = judge.breaches(cand, with_limits=limits), judge.breaches(base, with_limits=limits)
    findings = gate(base.measurements, cand.measurements, over, profile.gate, baseline_breaches=over_before)
    md = markdown(findings, f"{cand.run_id} against {base.run_id} ({profile.file})")
    md += _attribution(args.store, base, cand)
    print(md)
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    return EXIT_GATE if any(f.failing for f in findings) else EXIT_OK


def cmd_runs(args) -> int:
    from harness.store import StoreError, list_runs

    try:
        runs = list_runs(args.store)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if args.json:
        print(json.dumps([r.manifest for r in runs], indent=2, default=str))
        return EXIT_OK
    for r in runs:
        fp = r.manifest.get("fingerprint", {})
        gpu = (fp.get("gpu") or {}).get("names") or ["cpu"]
        commit = (fp.get("sglang_commit") or "?")[:10]
        profile = r.manifest.get("profile", {}).get("name", "?")
        started = r.manifest.get("started_at", "?")
        print(f"{r.run_id}  {started}  {r.status:<11}  sglang {commit:<10}  {gpu[0]}  {profile}")
    return EXIT_OK


def run_tagged(argv: list[str], tags: dict) -> int:
    """`sm120-harness run ARGV` in this process, with `tags` added to the run's manifest (a bisect's
    steps say which bisect and commit they belong to)."""
    return cmd_run(_parser().parse_args(["run", *argv]), tags)


def cmd_run(args, tags: dict | None = None) -> int:
    from harness.catalogue import CatalogueError, discover
    from harness.content import content_dir
    from harness.profile import ProfileError, load_profile, select
    from harness.server import ServerConfigError, check_url

    try:
        suite = args.suite or content_dir("suites") / "smoke.toml"
        profile = load_profile(suite)
        kernels_dir = args.kernels_dir or content_dir("kernels")
        # a serving-only profile runs without the op files
        ops = discover(kernels_dir) if profile.kernels is not None else {}
        if getattr(args, "server_url", None):
            args.server_url = check_url(args.server_url)
    except (ProfileError, CatalogueError, FileNotFoundError, ServerConfigError) as exc:
        _err(str(exc))
        return EXIT_USAGE

    import torch

    has_gpu = torch.cuda.is_available()
    try:
        selections = select(profile, ops, has_gpu=has_gpu, only=args.only.split(",") if args.only else None)
    except ProfileError as exc:
        _err(str(exc))
        return EXIT_USAGE
    serving = args.command == "run" and profile.serving
    if getattr(args, "server_url", None) and not serving:
        _err(f"--server-url: {profile.file} has no serving suite ([accuracy] or [perf])")
        return EXIT_USAGE
    if not selections and not serving:
        _err(f"{profile.file}: the profile selects nothing to run (no [kernels], [accuracy] or [perf] section)")
        return EXIT_USAGE
    if args.command == "golden":
        for sel in selections:
            sel.impls = []  # goldens only
    return _execute(args, profile, selections, has_gpu, "audit" if args.command == "audit" else "kernels", tags)


def _previous(store: str, profile: str, fp: dict, suite: str) -> tuple[str, dict] | None:
    """The last run of this profile on this kind of machine that says where its seconds went: the
    schedule's estimates."""
    from harness.schedule import previous_seconds
    from harness.store import StoreError, latest

    gpu = (fp.get("gpu") or {}).get("names")

    def same(m: dict) -> bool:
        return (
            m.get("profile", {}).get("name") == profile
            and suite in m.get("suites", [])
            and (m.get("fingerprint", {}).get("gpu") or {}).get("names") == gpu
            and "schedule" in m
        )

    try:
        run = latest(store, same)
    except (StoreError, OSError):
        return None
    return (run.run_id, previous_seconds(run.measurements)) if run is not None else None


def _execute(args, profile, selections, has_gpu: bool, suite: str, tags: dict | None = None) -> int:
    import torch

    from harness import audit, judge, walltime
    from harness import metrics as M
    from harness.console import Progress, audit_summary, serving_summary, summary
    from harness.content import content_dir
    from harness.fingerprint import fingerprint, redact, sglang_git
    from harness.page import render_run
    from harness.parity import Settings, run_kernels
    from harness.store import RunWriter, StoreError, load_run
    from harness.worker import kill_all

    env_slots = os.environ.get("SM120_HARNESS_SLOTS", "")
    if env_slots and not (env_slots.isdigit() and int(env_slots) >= 1):
        _err(f"SM120_HARNESS_SLOTS: expected an integer >= 1 (worker slots per device), got {env_slots!r}")
        return EXIT_USAGE
    fp = fingerprint()
    serving = suite == "kernels" and args.command == "run" and profile.serving
    limits = judge.resolve(profile, selections, audit=suite == "audit", serving=serving)
    suites = ([suite] if selections else []) + (
        [n for n in ("accuracy", "perf") if getattr(profile, n) is not None] if serving else []
    )
    try:
        if getattr(args, "resume", None):
            from harness.store import resolve

            old = resolve(args.store, args.resume)
            # what was measured stays; failed units and any kernel rows of the profile are redone
            outcomes = old.measurements[old.measurements["metric"] == M.OUTCOME]
            done = set(outcomes[outcomes["status"] == "ok"]["case"])
            redo = set(outcomes["case"]) - done
            # a unit's rows stay unless it is to be redone (lm-eval's flexible-match case has no outcome
            # of its own: it rides on gsm8k/lm_eval's)
            writer = RunWriter.reopen(old, lambda r: r["suite"] in ("accuracy", "perf") and r["case"] not in redo)
            writer.manifest.setdefault("limits", limits)  # a run from before limits were stored
        else:
            writer = RunWriter.create(
                args.store,
                {
                    "profile": profile.manifest(),
                    "fingerprint": fp,
                    "argv": redact(sys.argv),
                    "suites": suites,
                    "git": sglang_git(),
                    "server": None,
                    "limits": limits,
                    **(tags or {}),
                },
            )
            done = set()
    except (StoreError, OSError) as exc:
        _err(str(exc))
        return EXIT_INFRA
    total = sum(len(s.cases) * (len(s.goldens) + len(s.impls)) for s in selections)
    progress = Progress(total)
    capability = tuple(torch.cuda.get_device_capability(0)) if has_gpu else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (
        (
            [d.strip() for d in visible.split(",") if d.strip()]
            if visible
            else [str(i) for i in range(torch.cuda.device_count())]
        )
        if has_gpu
        else [None]
    )
    from harness.cache import resolve as resolve_cache
    from harness.profile import KernelsConfig

    k = profile.kernels or KernelsConfig()
    per_device = int(os.environ.get("SM120_HARNESS_SLOTS") or k.slots)
    slots = [d for _ in range(per_device) for d in devices]  # round robin: slot i on device i mod n
    cache = resolve_cache(k.cache_dir)
    os.environ.update(cache.env())  # every worker, and the audit's compiler, inherit it
    writer.manifest["cache"] = {"root": str(cache.root), "from": cache.source, "before": cache.usage()}
    capture = getattr(args, "golden_command", None) == "capture"
    outputs = tempfile.TemporaryDirectory(prefix="sm120-harness-capture-") if capture else None
    settings = Settings(
        capability=capability,
        slots=slots,
        timeout_s=k.timeout_s,
        seed=k.seed,
        on_result=progress.result,
        golden_dir=None if capture else (getattr(args, "golden_dir", None) or content_dir("golden")),
        golden_source="live" if capture else getattr(args, "golden_source", "auto"),
        keep_outputs=Path(outputs.name) if outputs else None,
        timing=None if capture else k.timing,
        gpu_name=torch.cuda.get_device_name(0) if has_gpu else None,
        inputs_dir=cache.inputs,
        threads=max(1, (os.cpu_count() or 1) // len(slots)) if not has_gpu and len(slots) > 1 else None,
        previous=_previous(args.store, profile.name, fp, suite),
    )
    where = f"{len(devices)} x {torch.cuda.get_device_name(0)}" if has_gpu else "CPU, Triton interpreter"
    where += f", {len(slots)} slot(s)" if len(slots) > 1 else ""
    what = f"{total} path x case" if suite == "kernels" else "SM120 audit"
    progress.say(f"run {writer.run_id}: {profile.name} ({what}) on {where} -> {writer.dir}")
    progress.say(f"caches: {cache.root} ({cache.source})")
    if has_gpu and per_device > 1 and k.timing:
        progress.say(f"note: {per_device} slots share each GPU, so kernel timings contend with each other")

    status, code = "complete", EXIT_OK
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if suite == "audit":
            audit.run_audit(selections, writer, settings)
        elif selections:
            run_kernels(selections, writer, settings)
        if serving and not settings.cancelled.is_set():
            from harness.gsm8k import DataError
            from harness.server import ServerConfigError, ServerError
            from harness.serving import run_serving

            try:
                run_serving(
                    profile,
                    writer,
                    server_url=getattr(args, "server_url", None),
                    data_dir=getattr(args, "data_dir", None),
                    done=done,
                    cancelled=settings.cancelled,
                    say=progress.say,
                )
            except (ServerConfigError, DataError) as exc:
                _err(str(exc))
                code = EXIT_USAGE
            except ServerError as exc:
                _err(str(exc))
                code = EXIT_INFRA
    except (KeyboardInterrupt, _Terminated):
        settings.cancelled.set()
        kill_all()
        status, code = "interrupted", EXIT_INTERRUPTED
        progress.say("interrupted: keeping what was measured")
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.manifest["cache"]["after"] = cache.usage()
        if settings.schedule:
            writer.manifest["schedule"] = settings.schedule
        writer.finish(status)

    run = load_run(writer.dir)
    over = judge.breaches(run)
    page = render_run(run, over, writer.artifacts / "report.html")
    if writer.publish_to:
        try:
            page = f"{writer.publish()}/artifacts/report.html"
        except StoreError as exc:
            _err(str(exc))
            code = EXIT_INFRA
    if selections:
        progress.say("\n" + (audit_summary if suite == "audit" else summary)(run.measurements, over))
        spent = walltime.text(run.measurements, run.manifest.get("schedule"))
        if spent:
            progress.say("\nwhere the time went (s):\n" + spent)
    m = run.measurements
    broken = judge.broken(run)
    if serving:
        progress.say("\n" + serving_summary(m))
    if code == EXIT_OK and (len(over) or len(broken)):
        code = EXIT_GATE
        progress.say(f"\n{len(over)} measurement(s) over a ceiling, {len(broken)} path x case failed")
    if capture and code != EXIT_INTERRUPTED:
        from harness.goldens import write

        stored = 0
        wanted = {(s.op.name, g) for s in selections for g in (s.listed_goldens or s.goldens)}
        for _, o in m[(m["metric"] == M.OUTCOME) & (m["status"] == "ok")].iterrows():
            if (o["case"].split("/", 1)[0], o["impl"]) not in wanted:
                continue
            detail = json.loads(o["detail"])
            op, case = o["case"].split("/", 1)
            write(
                args.out,
                op=op,
                case=case,
                case_version=o["case_version"],
                golden=o["impl"],
                seed=k.seed,
                input_digest=detail["digest"],
                outputs_file=Path(outputs.name) / op / case / f"{o['impl']}.safetensors",
                fingerprint=run.manifest["fingerprint"],
            )
            stored += 1
        outputs.cleanup()
        progress.say(f"stored {stored} golden output(s) in {args.out}")
    progress.say(f"page: {page}")
    if args.json:
        print(
            json.dumps(
                {
                    "run": run.manifest,
                    "exit_code": code,
                    "measurements": json.loads(run.measurements.to_json(orient="records")),
                },
                default=str,
            )
        )
    else:
        print(writer.run_id)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

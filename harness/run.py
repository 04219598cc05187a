"""The engine's one entry: `execute(request) -> Outcome`. It loads the profile once, takes the machine's
fingerprint, opens the store writer, lays out the worker slots and the caches, owns the signals, runs
the suites (kernel parity or the audit, then the serving suites), judges the run, renders its page and
publishes it. `nightly`, `bisect` and `golden capture` compose it in Python; the command line only turns
arguments into a Request and an Outcome into an exit code.

Exit codes: 0 pass; 1 a ceiling crossed or a path failed/crashed/timed out; 2 usage or configuration
error; 3 infrastructure failure (the store cannot be written, the server would not start); 130
interrupted (what was measured is kept, the run is marked `interrupted`)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from harness import limits
from harness.audit.suite import run_audit
from harness.cache import CacheDir
from harness.cache import locate as locate_cache
from harness.content import content_dir
from harness.fingerprint import fingerprint, sglang_git
from harness.pages import walltime
from harness.pages.console import (
    Progress,
    audit_summary,
    coverage_summary,
    known_findings,
    serving_summary,
    summary,
)
from harness.pages.run_page import render_run
from harness.parity import coverage
from harness.parity.catalogue import CatalogueError, Op, Selection, discover
from harness.parity.suite import Settings, run_kernels
from harness.profile import KernelsConfig, Profile, ProfileError, load_profile, select
from harness.results import judge
from harness.results import metrics as M
from harness.results.redaction import secret_values
from harness.results.store import Run, RunWriter, StoreError, latest, load_run, resolve_run
from harness.serving.gsm8k import DataError
from harness.serving.server import ServerConfigError, ServerError, check_url
from harness.serving.suite import run_serving
from harness.workers import sglang_src
from harness.workers.environment import Unavailable, scoped_environ
from harness.workers.executor import Slots
from harness.workers.schedule import previous_seconds
from harness.workers.worker import kill_all

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
RUN, AUDIT, GOLDENS = "run", "audit", "goldens"  # what a request runs: the profile's suites, its audit, its goldens


class UsageError(Exception):
    """The request or its profile cannot be run as given (exit 2); nothing was written."""


class InfraError(Exception):
    """The machine cannot run it: the store cannot be written (exit 3); nothing was measured."""


def to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Request:
    """What to run. `profile` is a profile file or one already loaded (a nightly loads it once)."""

    profile: Path | Profile | None = None  # None: suites/smoke.toml
    store: str = "runs"
    kernels_dir: Path | None = None  # None: kernels/
    only: list[str] | None = None  # op names
    what: str = RUN  # RUN: the kernel suite and the serving suites; AUDIT: the SM120 audit; GOLDENS: goldens only
    golden_dir: Path | None = None  # stored goldens; None: golden/
    golden_source: str = "auto"  # auto: a golden runs live where it can, else from the store; live; stored
    keep_outputs: Path | None = None  # the outputs stay here after the run (what golden capture stores)
    server_url: str | None = None  # attach the serving suites to this server instead of launching one
    data_dir: Path | None = None  # GSM8K's files, for offline runners
    resume: str | None = None  # a run to continue: what it measured is kept
    tags: dict = field(default_factory=dict)  # added to the run's manifest (a bisect's step says so)
    say: Callable[[str], None] = to_stderr  # progress and messages, for a person


@dataclass
class Outcome:
    run: Run  # as stored
    code: int
    page: str  # the run's HTML page (its URL in a remote store)
    selections: list[Selection]
    profile: Profile


@dataclass
class _Plan:
    profile: Profile
    selections: list[Selection]
    serving: bool
    has_gpu: bool
    ops: dict[str, Op] = field(default_factory=dict)  # every op file of the folder (coverage is of them all)


def _plan(request: Request) -> _Plan:
    """The profile loaded (once) and its selections resolved against the op files; bad input raises
    UsageError naming the file and field."""
    try:
        profile = request.profile
        if not isinstance(profile, Profile):
            profile = load_profile(profile or content_dir("suites") / "smoke.toml")
        # a serving-only profile runs without the op files
        ops = discover(request.kernels_dir or content_dir("kernels")) if profile.kernels is not None else {}
        if request.server_url:
            request.server_url = check_url(request.server_url)
        has_gpu = torch.cuda.is_available()
        selections = select(profile, ops, has_gpu=has_gpu, only=request.only)
    except (ProfileError, CatalogueError, FileNotFoundError, ServerConfigError) as exc:
        raise UsageError(str(exc)) from exc
    serving = request.what == RUN and profile.serving
    if request.server_url and not serving:
        raise UsageError(f"--server-url: {profile.file} has no serving suite ([accuracy] or [perf])")
    if not selections and not serving:
        raise UsageError(
            f"{profile.file}: the profile selects nothing to run (no [kernels], [accuracy] or [perf] section)"
        )
    if request.what == GOLDENS:
        for sel in selections:
            sel.impls = []  # goldens only
    env_slots = os.environ.get("SM120_HARNESS_SLOTS", "")
    if env_slots and not (env_slots.isdigit() and int(env_slots) >= 1):
        raise UsageError(f"SM120_HARNESS_SLOTS: expected an integer >= 1 (worker slots per device), got {env_slots!r}")
    return _Plan(profile, selections, serving, has_gpu, ops)


def _previous(store: str, profile: str, fp: dict, suite: str) -> tuple[str, dict] | None:
    """The last run of this profile on this kind of machine that says where its seconds went: the
    schedule's estimates."""
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


def _writer(
    request: Request, plan: _Plan, fp: dict, run_limits: limits.Limits, suites: list[str]
) -> tuple[RunWriter, set[str]]:
    """A new run's writer, or a resumed run's with what it measured already (the cases not to redo)."""
    if request.resume:
        old = resolve_run(request.store, request.resume)
        # what was measured stays; failed units and any kernel rows of the profile are redone
        outcomes = old.measurements[old.measurements["metric"] == M.OUTCOME]
        redo = set(outcomes["case"]) - set(outcomes[outcomes["status"] == "ok"]["case"])
        # a unit's rows stay unless it is to be redone (lm-eval's flexible-match case has no outcome of its
        # own: it rides on gsm8k/lm_eval's)
        keep = lambda r: r["suite"] in ("accuracy", "perf") and r["case"] not in redo  # noqa: E731
        writer = RunWriter.reopen(old, keep, _secrets(request, plan.profile))
        writer.manifest.setdefault("limits", run_limits)  # a run from before limits were stored
        return writer, set(outcomes[outcomes["status"] == "ok"]["case"])
    manifest = {
        "profile": plan.profile.manifest(),
        "fingerprint": fp,
        "argv": sys.argv,  # secrets hidden as the writer writes it
        "suites": suites,
        "git": sglang_git(),
        "server": None,
        "limits": run_limits,
        "known": limits.known(plan.selections),  # known findings: allowlisted until their date
        "unjudged": limits.unjudged(plan.selections),  # figures no limit judges, and why
        "only": request.only,  # a subset of the profile's ops: the gate counts what it lacks
        **request.tags,
    }
    return RunWriter.create(request.store, manifest, _secrets(request, plan.profile)), set()


def _secrets(request: Request, profile: Profile) -> set[str]:
    """What the run must never write: the secret values of the server's arguments and environment (and
    what the profile marks secret), of the command line, and of this process's environment."""
    s = profile.server
    values = secret_values([*s.args, *(s.command or [])], s.env, s.secret)
    values |= secret_values([*sys.argv, request.server_url or ""], dict(os.environ))
    return values


def _devices(has_gpu: bool) -> list[str | None]:
    if not has_gpu:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


class _Terminated(BaseException):
    """SIGTERM, handled like ^C so the run is closed as `interrupted`."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def execute(request: Request) -> Outcome:
    """Run what `request` asks into its store and return the finished run. Raises UsageError (nothing
    written) or InfraError (the store cannot be written); anything measured is kept."""
    plan = _plan(request)
    profile, selections = plan.profile, plan.selections
    mode = AUDIT if request.what == AUDIT else "kernels"  # the suite the selections' rows go to
    fp = fingerprint()
    run_limits = limits.for_profile(profile, selections, audit=request.what == AUDIT, serving=plan.serving)
    suites = ([mode] if selections else []) + (
        [n for n in ("accuracy", "perf") if getattr(profile, n) is not None] if plan.serving else []
    )
    try:
        writer, done = _writer(request, plan, fp, run_limits, suites)
    except (StoreError, OSError) as exc:
        raise InfraError(str(exc)) from exc
    cache = locate_cache((profile.kernels or KernelsConfig()).cache_dir)
    try:
        with scoped_environ(cache.env()):  # every worker, and the audit's compiler, inherit it
            code = _run_suites(request, plan, mode, fp, writer, done, cache)
    except StoreError as exc:  # the run could not be closed (a full disk): its journal keeps the rows
        raise InfraError(str(exc)) from exc
    return _judge(request, plan, mode, writer, code)


def _run_suites(
    request: Request, plan: _Plan, mode: str, fp: dict, writer: RunWriter, done: set[str], cache: CacheDir
) -> int:
    """The suites, into the writer; the run is closed `complete`, or `interrupted` by ^C or SIGTERM."""
    profile, selections, say = plan.profile, plan.selections, request.say
    k = profile.kernels or KernelsConfig()
    devices = _devices(plan.has_gpu)
    per_device = int(os.environ.get("SM120_HARNESS_SLOTS") or k.slots)
    slots = Slots(
        capability=tuple(torch.cuda.get_device_capability(0)) if plan.has_gpu else None,
        devices=[d for _ in range(per_device) for d in devices],  # round robin: slot i on device i mod n
        timeout_s=k.timeout_s,
    )
    writer.manifest["cache"] = {"root": str(cache.root), "from": cache.source, "before": cache.usage()}
    total = sum(len(s.cases) * (len(s.goldens) + len(s.impls)) for s in selections)
    goldens_only = request.what == GOLDENS
    gpu_name = torch.cuda.get_device_name(0) if plan.has_gpu else None
    shared_cpu = not plan.has_gpu and len(slots.devices) > 1
    settings = Settings(
        slots=slots,
        seed=k.seed,
        on_result=Progress(total, say).result,
        golden_dir=None if goldens_only else (request.golden_dir or content_dir("golden")),
        golden_source="live" if goldens_only else request.golden_source,
        keep_outputs=request.keep_outputs,
        timing=None if goldens_only else k.timing,
        gpu_name=gpu_name,
        inputs_dir=cache.inputs,
        threads=max(1, (os.cpu_count() or 1) // len(slots.devices)) if shared_cpu else None,
        previous=_previous(request.store, profile.name, fp, mode),
    )
    where = f"{len(devices)} x {gpu_name}" if plan.has_gpu else "CPU, Triton interpreter"
    where += f", {len(slots.devices)} slot(s)" if len(slots.devices) > 1 else ""
    what = f"{total} path x case" if mode == "kernels" else "SM120 audit"
    say(f"run {writer.run_id}: {profile.name} ({what}) on {where} -> {writer.dir}")
    say(f"caches: {cache.root} ({cache.source})")
    if plan.has_gpu and per_device > 1 and k.timing:
        say(f"note: {per_device} slots share each GPU, so kernel timings contend with each other")

    status, code = "complete", EXIT_OK
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if mode == AUDIT:
            run_audit(selections, writer, slots, k.seed)
        elif selections:
            run_kernels(selections, writer, settings)
            if not goldens_only and not slots.cancelled.is_set():
                writer.add(_coverage_rows(request, plan, writer.run_id, say))
        if plan.serving and not slots.cancelled.is_set():
            serving = dict(server_url=request.server_url, data_dir=request.data_dir, done=done, say=say)
            try:
                run_serving(profile, writer, cancelled=slots.cancelled, **serving)
            except (ServerConfigError, DataError) as exc:
                say(f"sm120-harness: error: {exc}")
                code = EXIT_USAGE
            except ServerError as exc:
                say(f"sm120-harness: error: {exc}")
                code = EXIT_INFRA
    except (KeyboardInterrupt, _Terminated):
        slots.cancelled.set()
        kill_all()
        status, code = "interrupted", EXIT_INTERRUPTED
        say("interrupted: keeping what was measured")
    finally:
        signal.signal(signal.SIGTERM, previous)
        writer.manifest["cache"]["after"] = cache.usage()
        if settings.schedule:
            writer.manifest["schedule"] = settings.schedule
        writer.finish(status)
    return code


def _coverage_rows(request: Request, plan: _Plan, run_id: str, say: Callable[[str], None]) -> list[dict]:
    """The coverage of the forward-path inventory by the op files, against the SGLang measured: stored
    with every kernel run (harness/parity/coverage.py)."""
    folder = Path(request.kernels_dir or content_dir("kernels")) / "inventory"
    file = coverage.inventory_file(folder, sglang_src.generated("__version__"))
    if file is None:
        return []
    try:
        inv = coverage.load_inventory(file)
        root = sglang_src.sglang_root()
    except coverage.InventoryError as exc:
        say(f"coverage not stored: {exc}")
        return []
    except Unavailable:
        root = None
    groups = coverage.measure(inv, plan.ops, root)
    return coverage.rows(run_id, inv, groups, {s.op.name for s in plan.selections})


def _judge(request: Request, plan: _Plan, mode: str, writer: RunWriter, code: int) -> Outcome:
    """The finished run judged by its limits, its page rendered and published, the summary said."""
    say = request.say
    run = load_run(writer.dir)
    over = judge.breaches(run, limits.of_run(run, kernels_dir=request.kernels_dir))
    page = str(render_run(run, over, writer.artifacts / "report.html"))
    if writer.publish_to:
        try:
            page = f"{writer.publish()}/artifacts/report.html"
        except StoreError as exc:
            say(f"sm120-harness: error: {exc}")
            code = EXIT_INFRA
    if plan.selections:
        say("\n" + (audit_summary if mode == AUDIT else summary)(run.measurements, over))
        covered = coverage_summary(run.measurements)
        if covered:
            say("\n" + covered)
        spent = walltime.text(run.measurements, run.manifest.get("schedule"))
        if spent:
            say("\nwhere the time went (s):\n" + spent)
    broken = judge.broken(run)
    if plan.serving:
        say("\n" + serving_summary(run.measurements))
    allowed = known_findings(over, broken, judge.expired(pd.concat([over, broken]), judge.known(run)))
    if allowed:
        say("\n" + allowed)
    failing_over, failing_broken = judge.failing(over), judge.failing(broken)
    if code == EXIT_OK and (len(failing_over) or len(failing_broken)):
        code = EXIT_GATE
        say(f"\n{len(failing_over)} measurement(s) over a ceiling, {len(failing_broken)} path x case failed")
    say(f"page: {page}")
    return Outcome(run=run, code=code, page=page, selections=plan.selections, profile=plan.profile)

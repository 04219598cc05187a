"""The jobs built on the engine entry (harness/run.py), composed in Python: gating a candidate run against
a baseline, comparing two runs, capturing goldens, and the nightly (the profile's run, its audit, the
gate against the previous nightly, the site)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from harness import limits
from harness.content import content_dir
from harness.fingerprint import sglang_generated
from harness.pages.site import build as build_site
from harness.parity import goldens
from harness.parity.arch_gates import ArchGateError, Site, modules_of
from harness.parity.arch_gates import read as read_arch_gates
from harness.parity.catalogue import CatalogueError, discover
from harness.parity.coverage import (
    GroupCoverage,
    InventoryError,
    RegistryCheck,
    check_registry,
    inventory_file,
    load_inventory,
    measure,
    unknown,
)
from harness.parity.registry import RegistryError, specs
from harness.profile import KernelsConfig, Profile, ProfileError, load_profile
from harness.results import attribution, judge
from harness.results import metrics as M
from harness.results.compare import compare
from harness.results.gate import Allow, Compared, Finding, GateRefused, admit, compared_rows, gate, markdown
from harness.results.store import Run, StoreError, is_url, list_runs, resolve_run
from harness.run import (
    AUDIT,
    EXIT_GATE,
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    GOLDENS,
    RUN,
    InfraError,
    Outcome,
    Request,
    UsageError,
    execute,
    to_stderr,
)
from harness.workers import line_coverage
from harness.workers.environment import Unavailable, scoped_environ
from harness.workers.sglang_src import sglang_root


def default_site(store: str) -> Path:
    """The default site folder: beside the runs of a local store, else ./site."""
    return Path("site") if is_url(store) else Path(store) / "site"


def moved_kernels(store: str, baseline: Run, candidate: Run, compared: pd.DataFrame | None = None) -> str:
    """The kernels that moved when an end-to-end figure dropped (harness/results/attribution.py), as
    Markdown."""
    found = attribution.attribute(baseline.measurements, candidate.measurements, compared)
    others = []
    if found.drops and not all(found.kernel_rows):  # name the runs of the same commits that hold kernel rows
        try:
            others = [r.manifest for r in list_runs(store)]
        except StoreError:
            pass
    return attribution.markdown(found, (baseline.manifest, candidate.manifest), others)


def describe(baseline: Run, candidate: Run) -> str:
    """What the two runs are (status, profile, suites, --only), as Markdown lines after a table."""

    def one(run: Run) -> str:
        m = run.manifest
        only = f", only {','.join(m['only'])}" if m.get("only") else ""
        suites = ",".join(m.get("suites") or []) or "nothing"
        return f"{run.run_id}: {run.status}, profile {m.get('profile', {}).get('name', '?')}, {suites}{only}"

    return f"\n\nbaseline {one(baseline)}  \ncandidate {one(candidate)}"


@dataclass
class Comparison:
    rows: pd.DataFrame  # every aligned row with its verdict
    title: str
    runs: str  # what the two runs are (status, profile, suites, --only), as Markdown
    moved: str  # the kernels that moved, as Markdown ("" where nothing end to end dropped)


def compare_runs(store: str, baseline: str, candidate: str) -> Comparison:
    """Two runs of the store, named as `runs` names them, compared. Raises StoreError."""
    a, b = resolve_run(store, baseline), resolve_run(store, candidate)
    rows = compare(a.measurements, b.measurements)
    return Comparison(rows, f"{b.run_id} against {a.run_id}", describe(a, b), moved_kernels(store, a, b, rows))


@dataclass
class GateResult:
    findings: list[Finding]
    compared: Compared | None  # None where the candidate was not gated whole (see the findings)
    markdown: str

    @property
    def failing(self) -> bool:
        return any(f.failing for f in self.findings)


def gate_runs(
    store: str, baseline: str, candidate: str, profile: Path | Profile | None = None, kernels_dir: Path | None = None
) -> GateResult:
    """The candidate gated against the baseline with the gate settings of `profile` (default: the
    profile the candidate ran, else suites/smoke.toml) and the candidate's limits; the summary is also
    appended to $GITHUB_STEP_SUMMARY where set. The gate judges only what it compared: it refuses two
    runs of different kinds (UsageError), fails a candidate that did not end complete and one that lacks
    rows of the baseline the profile does not allow it to lack, and says how much it compared. Raises
    StoreError or UsageError."""
    base, cand = resolve_run(store, baseline), resolve_run(store, candidate)
    if not isinstance(profile, Profile):
        stored = Path(cand.manifest.get("profile", {}).get("file", ""))
        try:
            profile = load_profile(profile or (stored if stored.is_file() else content_dir("suites") / "smoke.toml"))
        except (ProfileError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from exc
    try:
        findings = admit(base.manifest, cand.manifest, profile.gate)
    except GateRefused as exc:
        raise UsageError(f"gate {cand.run_id} against {base.run_id}: {exc}") from exc
    title = f"{cand.run_id} against {base.run_id} ({profile.file})"
    cov = None
    if not findings:  # a whole run: judged row by row
        cand_limits = limits.of_run(cand, profile=profile, kernels_dir=kernels_dir)
        # the baseline is held to the candidate's limits, so a limit it crossed too is told apart
        over, over_before = judge.breaches(cand, cand_limits), judge.breaches(base, cand_limits)
        compared = compare(base.measurements, cand.measurements)
        cov, missing = compared_rows(compared, profile.gate, cand.status)
        # the candidate's known findings (its op files' KNOWN, stored with it) allow what they cover, as
        # the profile's own [gate] allow entries do, until their date
        cfg = replace(profile.gate, allow=[*profile.gate.allow, *(Allow(**k) for k in judge.known(cand))])
        findings = missing + gate(
            base.measurements, cand.measurements, over, cfg, baseline_breaches=over_before, compared=compared
        )
    md = markdown(findings, title, cov) + describe(base, cand) + moved_kernels(store, base, cand)
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    return GateResult(findings, cov, md)


def capture_goldens(request: Request, out: Path) -> Outcome:
    """Run the profile's goldens where they run and store their outputs in `out` (safetensors with a
    manifest and sha256, harness/parity/goldens.py)."""
    with tempfile.TemporaryDirectory(prefix="sm120-harness-capture-") as outputs:
        request.what, request.keep_outputs = GOLDENS, Path(outputs)
        outcome = execute(request)
        if outcome.code == EXIT_INTERRUPTED:
            return outcome
        m, seed = outcome.run.measurements, (outcome.profile.kernels or KernelsConfig()).seed
        wanted = {(s.op.name, g) for s in outcome.selections for g in (s.listed_goldens or s.goldens)}
        stored = 0
        for _, o in m[(m["metric"] == M.OUTCOME) & (m["status"] == "ok")].iterrows():
            op, case = o["case"].split("/", 1)
            if (op, o["impl"]) not in wanted:
                continue
            goldens.write(
                out,
                op=op,
                case=case,
                case_version=o["case_version"],
                golden=o["impl"],
                seed=seed,
                input_digest=json.loads(o["detail"])["digest"],
                outputs_file=Path(outputs) / op / case / f"{o['impl']}.safetensors",
                fingerprint=outcome.run.manifest["fingerprint"],
            )
            stored += 1
    request.say(f"stored {stored} golden output(s) in {out}")
    return outcome


@dataclass
class Nightly:
    runs: list[Outcome] = field(default_factory=list)  # the profile's run, then its audit
    gate: GateResult | None = None  # against the previous nightly of the profile, where there is one
    site: Path | None = None
    code: int = EXIT_OK  # the worst of the steps


def nightly(
    profile_file: Path,
    store: str,
    *,
    kernels_dir: Path | None = None,
    site: Path | None = None,
    server_url: str | None = None,
    data_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> Nightly:
    """The nightly job: the profile's run (kernels and/or serving) and, with kernels, the audit, as two
    runs of the store; the run gated against the previous run of the same profile; then the site.
    Raises UsageError before anything runs; a step that fails to run ends it with that step's code."""
    try:
        profile = load_profile(profile_file)
    except (ProfileError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    say = say or to_stderr
    common = dict(profile=profile, store=store, kernels_dir=kernels_dir, say=say)
    before = {r.run_id for r in list_runs(store)}
    result = Nightly()
    result.runs.append(execute(Request(what=RUN, server_url=server_url, data_dir=data_dir, **common)))
    if profile.kernels is not None:  # a serving-only profile has no kernels to audit
        result.runs.append(execute(Request(what=AUDIT, **common)))
    codes = [o.code for o in result.runs]
    if EXIT_INTERRUPTED in codes or EXIT_USAGE in codes:
        result.code = max(codes)
        return result
    try:
        mine = [
            r
            for r in list_runs(store)
            if r.manifest.get("profile", {}).get("name") == profile.name
            and AUDIT not in r.manifest.get("suites", [])
            and "bisect" not in r.manifest  # a bisect's step measured some older commit
        ]
    except StoreError as exc:
        say(f"sm120-harness: error: {exc}")
        result.code = EXIT_INFRA
        return result
    mine.sort(key=lambda r: r.manifest.get("started_at", ""))
    new = [r for r in mine if r.run_id not in before]
    old = [r for r in mine if r.run_id in before]
    if new and old:
        result.gate = gate_runs(store, old[-1].run_id, new[-1].run_id, profile, kernels_dir)
        codes.append(EXIT_GATE if result.gate.failing else EXIT_OK)
    result.site = build_site(store, site or default_site(store), kernels_dir)
    result.code = EXIT_INFRA if EXIT_INFRA in codes else max(codes)
    return result


@dataclass
class KernelCoverage:
    inventory: Path | None  # None: no inventory in the folder
    sglang: str | None  # the version measured
    groups: list[GroupCoverage]
    unknown: dict[str, list[str]]  # op -> functions it covers that the inventory does not list
    registry: RegistryCheck | None = None  # None: not asked for, or these sources have no kernel registry
    registry_error: str | None = None


@dataclass
class ArchGates:
    sites: list[Site]
    unread: list[str]  # modules of the path that did not import here, with why


def arch_gates(kernels_dir: Path | None = None) -> ArchGates:
    """Every compute-capability test in the modules of the inventory of the SGLang measured, evaluated as
    SM90, SM100, SM120 and SM121 answer it (harness/parity/arch_gates.py)."""
    folder = kernels_dir or content_dir("kernels")
    try:
        root = sglang_root()
    except Unavailable as exc:
        raise UsageError(str(exc)) from exc
    if root is None:
        raise UsageError("SGLang is not installed here (pip install --no-deps sglang, or set SM120_HARNESS_SGLANG_SRC)")
    file = inventory_file(Path(folder) / "inventory", sglang_generated("__version__"))
    if file is None:
        raise UsageError(f"no inventory in {folder}/inventory/")
    try:
        sites, unread = read_arch_gates(root, modules_of(load_inventory(file)))
    except (InventoryError, ArchGateError) as exc:
        raise InfraError(str(exc)) from exc
    return ArchGates(sites, unread)


def kernel_coverage(kernels_dir: Path | None = None, with_registry: bool = True) -> KernelCoverage:
    """The inventory of the SGLang measured (its sources' version, else the newest there is), against
    the op files' COVERS, the sources (absent, changed) and SGLang's kernel registry."""
    folder = kernels_dir or content_dir("kernels")
    try:
        ops = discover(folder)
        root = sglang_root()
    except (CatalogueError, Unavailable) as exc:
        raise UsageError(str(exc)) from exc
    version = sglang_generated("__version__")
    file = inventory_file(Path(folder) / "inventory", version)
    if file is None:
        return KernelCoverage(None, version, [], {})
    try:
        inv = load_inventory(file)
    except InventoryError as exc:
        raise UsageError(str(exc)) from exc
    registry, error = None, None
    if with_registry and root is not None:
        try:
            registry = specs(root)
        except RegistryError as exc:
            error = str(exc)
    checked = check_registry(inv, registry) if registry is not None else None
    groups = measure(inv, ops, root, registry)
    return KernelCoverage(file, version, groups, unknown(inv.groups, ops), checked, error)


@dataclass
class LineCoverage:
    files: list[dict]  # per SGLang file with a kernel the catalogue reached: each kernel's statements, executed
    run: Run  # the traced run (a temporary store): its statuses say which paths ran


def triton_line_coverage(kernels_dir: Path | None = None, only: list[str] | None = None) -> LineCoverage:
    """The default profile's CPU cases run with every worker tracing SGLang's sources: which lines of
    SGLang's Triton kernels the catalogue executes under the interpreter (harness/workers/line_coverage.py).
    Only where there is no GPU: on a GPU the kernels run compiled."""
    if torch.cuda.is_available():
        raise UsageError("coverage --lines traces the kernels under Triton's interpreter: on a machine without a GPU")
    try:
        import coverage  # noqa: F401
    except ImportError as exc:
        raise UsageError("coverage --lines needs coverage.py (pip install 'sm120-harness[sglang-cpu]')") from exc
    try:
        root = sglang_root()
    except Unavailable as exc:
        raise UsageError(str(exc)) from exc
    if root is None:
        raise UsageError("coverage --lines: sglang is not installed")
    with tempfile.TemporaryDirectory(prefix="sm120-lines-") as tmp:
        with scoped_environ({line_coverage.ENV: tmp}):
            request = Request(store=str(Path(tmp) / "runs"), kernels_dir=kernels_dir, only=only, say=lambda _: None)
            out = execute(request)
        return LineCoverage(line_coverage.measure(Path(tmp), root), out.run)

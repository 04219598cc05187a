"""Bisecting a regression to the first bad SGLang commit.

`bisect()` walks the first-parent history of an SGLang git checkout from GOOD to BAD. Each commit it
tests is checked out in a worktree of its own under a temporary folder (the user's working tree is
never touched) and the profile runs against it, in this process, through SM120_HARNESS_SGLANG_SRC:
every step is a run of the store whose manifest says `bisect: {id, commit, role}`.

A step's verdict is the gate's against GOOD's run:
    bad    the gate fails on something GOOD does not fail on itself: a ceiling GOOD does not cross, a
           path that did not fail at GOOD, or any change it judges against GOOD (drift `drift_factor`
           times GOOD's, a slowdown); a ceiling GOOD already crosses, a path already failing there,
           are GOOD's state, not the regression looked for;
    skip   (git bisect's 125) a path that ran at GOOD cannot run here: its module is missing (the path
           is skipped), importing it fails (ImportError, SyntaxError), or its worker crashes or hangs
           while importing SGLang (the worker says what it was importing); such a path's rows are no
           evidence either way;
    good   otherwise.
The search tests the middle of the commits between the last good and the first bad one (BAD itself
only when the search ends on it); a skipped commit is stepped around, nearest the middle first. When
skipped commits are left between the last good and the first bad commit, the first bad one is any of
them or that one, as git bisect says.

The record of a bisect (its steps, the first bad commit and the rows failing there) is written to
`<store>/bisects/<id>.json` after every step, so an interrupted bisect keeps what it found."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from harness import limits
from harness.content import content_dir
from harness.parity.catalogue import CatalogueError, discover
from harness.profile import ProfileError, load_profile, select
from harness.results import metrics as M
from harness.results.ceilings import breaches
from harness.results.gate import Finding, GateConfig, gate
from harness.results.store import FAILURES, new_run_id, now, save_bisect
from harness.run import EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, InfraError, Request, UsageError, execute, to_stderr
from harness.workers.environment import scoped_environ
from harness.workers.sglang_src import ENV

GOOD, BAD, SKIP = "good", "bad", "skip"
# errors of a worker that could not load the commit's code, as the worker reports them ("Name: text")
LOAD_ERRORS = ("ImportError", "ModuleNotFoundError", "SyntaxError", "IndentationError")
# the SGLang part built once and installed, not from the checkout: its kernels are out of a bisect's reach
PREBUILT = "sgl-kernel"


class BisectError(Exception):
    """The range or the checkout cannot be bisected (exit 2)."""


class StepError(Exception):
    """A step could not be set up or run: git, the store, the run itself (exit 3)."""


@dataclass(frozen=True)
class Judgement:
    verdict: str  # good | bad | skip
    reason: str
    failing: list[Finding] = field(default_factory=list)


def _failing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.allowed_by is None]


def _outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["metric"] == M.OUTCOME]


def _detail(detail: str | None) -> dict:
    """A row's detail JSON; an unreadable one reads as empty (it is no evidence either way)."""
    try:
        return json.loads(detail or "{}")
    except json.JSONDecodeError:
        return {}


def unrunnable(good: pd.DataFrame, step: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(case, path) -> why, for each path that ran at GOOD and could not load its code at this step."""
    ran = _outcomes(good)
    ran = {(c, i) for c, i, s in zip(ran["case"], ran["impl"], ran["status"]) if s == "ok"}
    out = {}
    o = _outcomes(step)
    for case, impl, status, detail in zip(o["case"], o["impl"], o["status"], o["detail"]):
        if (case, impl) not in ran:
            continue
        error = str(_detail(detail).get("error") or "")
        if status.startswith(("skipped", "absent")):
            out[(case, impl)] = status
        elif status == "failed" and error.split(":", 1)[0] in LOAD_ERRORS:
            out[(case, impl)] = f"failed: {error}"
        elif status in ("crashed", "timeout") and _detail(detail).get("importing"):
            out[(case, impl)] = f"{status}: {error}"
    return out


def already_failing(good: pd.DataFrame, ceilings: dict[str, dict[str, float]], cfg: GateConfig) -> list[Finding]:
    """What the gate fails at GOOD against itself: its ceilings crossed, its paths failing."""
    return _failing(gate(good, good, breaches(good, ceilings), cfg))


def new_failures(
    good: pd.DataFrame, step: pd.DataFrame, ceilings: dict[str, dict[str, float]], cfg: GateConfig
) -> list[Finding]:
    """The gate's failures of `step` against GOOD that GOOD does not have itself: a ceiling crossed
    that GOOD does not cross; a path failing that did not fail at GOOD; and every change the gate
    judges against GOOD (drift `drift_factor` times GOOD's, a slowdown), on any row."""
    everything = _failing(gate(good, step, breaches(step, ceilings), cfg))
    changes = _failing(gate(good, step, step.iloc[0:0], cfg))  # the same gate without the ceilings
    over = breaches(good, ceilings)
    crossed_at_good = {
        (c, i, "" if pd.isna(r) else r, m)
        for c, i, r, m in zip(over["case"], over["impl"], over["reference"], over["metric"])
    }
    status_at_good = dict(zip(zip(good["case"], good["impl"], good["metric"]), good["status"]))
    out = []
    for f in everything:
        if f not in changes:  # a ceiling
            if (f.case, f.impl, f.reference, f.metric) not in crossed_at_good:
                out.append(f)
        elif not (f.metric == M.OUTCOME and status_at_good.get((f.case, f.impl, f.metric)) in FAILURES):
            out.append(f)
    return out


def judge(good: pd.DataFrame, step: pd.DataFrame, ceilings: dict[str, dict[str, float]], cfg: GateConfig) -> Judgement:
    """The verdict of one step's rows against GOOD's (see the module docstring)."""
    cannot = unrunnable(good, step)
    new = [f for f in new_failures(good, step, ceilings, cfg) if (f.case, f.impl) not in cannot]
    if new:
        first = new[0]
        more = f" (and {len(new) - 1} more)" if len(new) > 1 else ""
        return Judgement(BAD, f"{first.case} {first.impl} {first.metric}: {first.what}{more}", new)
    if cannot:
        (case, impl), why = next(iter(cannot.items()))
        more = f" (and {len(cannot) - 1} more)" if len(cannot) > 1 else ""
        return Judgement(SKIP, f"{case} {impl} cannot run: {why}{more}")
    return Judgement(GOOD, "passes the gate against GOOD")


def next_pick(lo: int, hi: int, skipped: set[int]) -> int | None:
    """The commit to test between the last good index `lo` and the first bad `hi` (GOOD is -1):
    the middle, else the untested commit nearest it (the earlier on a tie); None when none is left."""
    left = [i for i in range(lo + 1, hi) if i not in skipped]
    if not left:
        return None
    mid = (lo + hi + 1) // 2
    return min(left, key=lambda i: (abs(i - mid), i))


def search(
    n: int, test: Callable[[int], str], say: Callable[[int], None] = lambda left: None
) -> tuple[int, int, set[int]]:
    """Bisect commits 0..n-1 after GOOD (GOOD is -1, BAD is n-1) with `test(i)` -> good | bad | skip.
    BAD is tested only when the search ends on it: a bad commit before it makes that run needless.
    Returns (the last good index, the first bad index, the skipped indices)."""
    lo, hi, skipped = -1, n - 1, set()
    tested_bad = False
    while True:
        pick = next_pick(lo, hi, skipped)
        if pick is None:
            if hi < n - 1 or tested_bad:
                return lo, hi, skipped
            pick = n - 1
        else:
            say(hi - lo - 1 - len([i for i in skipped if lo < i < hi]))
        verdict = test(pick)
        if pick == n - 1:
            if verdict != BAD:
                raise BisectError(f"BAD is {verdict}, not bad: nothing to bisect")
            tested_bad = True
        elif verdict == GOOD:
            lo = pick
        elif verdict == BAD:
            hi = pick
        else:
            skipped.add(pick)


# ------------------------------------------------------------------------------------------------ git


def _git(repo: Path, *args: str) -> str:
    try:
        r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepError(f"git {' '.join(args)} in {repo}: {exc}") from exc
    if r.returncode != 0:
        raise BisectError(f"git {' '.join(args)} in {repo}: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


@dataclass(frozen=True)
class Checkout:
    """The SGLang git checkout being bisected: its top folder and where `sglang/` sits under it."""

    top: Path
    package_dir: str  # relative to the top: "python" in SGLang's layout

    @classmethod
    def at(cls, src: Path) -> Checkout:
        src = Path(src)
        if not src.is_dir():
            raise BisectError(f"--sglang-src {src}: no such folder")
        if not shutil.which("git"):
            raise BisectError("git is not installed")
        try:
            top = Path(_git(src, "rev-parse", "--show-toplevel"))
            prefix = _git(src, "rev-parse", "--show-prefix").rstrip("/")
        except BisectError as exc:
            raise BisectError(f"--sglang-src {src}: not a git checkout ({exc})") from exc
        # DIR is the repository (its python/ holds sglang/) or that python/ folder itself
        return cls(top, prefix or "python")

    def commit(self, ref: str, what: str) -> str:
        try:
            return _git(self.top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except BisectError as exc:
            raise BisectError(f"{what} {ref!r}: not a commit of {self.top}") from exc

    def history(self, good: str, bad: str) -> list[tuple[str, str]]:
        """(sha, subject) of each commit after GOOD up to BAD on BAD's first-parent line, oldest first."""
        if good == bad:
            raise BisectError(f"GOOD and BAD are the same commit ({good[:12]})")
        try:
            _git(self.top, "merge-base", "--is-ancestor", good, bad)
        except BisectError as exc:
            raise BisectError(f"GOOD {good[:12]} is not an ancestor of BAD {bad[:12]}") from exc
        text = _git(self.top, "log", "--first-parent", "--reverse", "--format=%H %s", f"{good}..{bad}")
        commits = [tuple(line.split(" ", 1)) if " " in line else (line, "") for line in text.splitlines()]
        first_parent = _git(self.top, "rev-parse", f"{commits[0][0]}^")
        if first_parent != good:
            raise BisectError(
                f"GOOD {good[:12]} is not on BAD's first-parent history (it is a commit of a merged branch): "
                f"give the merge's first parent, or a commit of the main line"
            )
        return commits

    def subject(self, sha: str) -> str:
        return _git(self.top, "log", "-1", "--format=%s", sha)

    def changes(self, good: str, bad: str, folder: str) -> int:
        """How many files under `folder` differ between the two commits."""
        return len(_git(self.top, "diff", "--name-only", good, bad, "--", folder).splitlines())

    @contextlib.contextmanager
    def worktree(self, sha: str, parent: Path) -> Iterator[Path]:
        """`sha` checked out (detached) in a worktree of its own; removed on the way out."""
        path = parent / sha[:12]
        try:
            _git(self.top, "worktree", "add", "--detach", "--quiet", str(path), sha)
        except BisectError as exc:
            raise StepError(f"cannot check out {sha[:12]}: {exc}") from exc
        try:
            yield path
        finally:
            with contextlib.suppress(BisectError, StepError):
                _git(self.top, "worktree", "remove", "--force", str(path))
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(BisectError, StepError):
                _git(self.top, "worktree", "prune")


# ------------------------------------------------------------------------------------------------ the search


@dataclass
class Bisect:
    """One bisect: the checkout, the run arguments, the gate's settings, and the record it writes."""

    checkout: Checkout
    store: str
    request: Request  # what each step runs: the profile, the store, the ops; the step adds its tags
    ceilings: dict[str, dict[str, float]]
    gate_cfg: GateConfig
    say: Callable[[str], None]
    record: dict = field(default_factory=dict)
    good_rows: pd.DataFrame | None = None

    def save(self) -> None:
        save_bisect(self.store, self.record)

    def step(self, sha: str, subject: str, role: str, workdir: Path) -> dict:
        """Run the profile at `sha`; its step as recorded (verdict, reason, failing rows, run id)."""
        self.say(f"bisect {self.record['id']}: {role} {sha[:12]} {subject}")
        t0 = time.monotonic()
        tags = {"bisect": {"id": self.record["id"], "commit": sha, "role": role}}
        with self.checkout.worktree(sha, workdir) as tree:
            env = {ENV: str(tree / self.checkout.package_dir), "SGLANG_GIT_COMMIT": sha, "SGLANG_GIT_MESSAGE": subject}
            # the branch of the checkout (detached) rather than the CI's, which names no commit of this range
            with scoped_environ(env, drop=("SGLANG_GIT_BRANCH", "GITHUB_HEAD_REF")):
                try:
                    outcome = execute(replace(self.request, tags=tags))
                except (UsageError, InfraError) as exc:
                    raise StepError(f"the run at {sha[:12]} could not run: {exc}") from exc
        if outcome.code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if outcome.code not in (EXIT_OK, EXIT_GATE):
            raise StepError(f"the run at {sha[:12]} exited with code {outcome.code} (see its messages above)")
        run = outcome.run
        if role == "good":
            self.good_rows = run.measurements
            o = _outcomes(run.measurements)
            if not any(s == "ok" and not _detail(d).get("golden") for s, d in zip(o["status"], o["detail"])):
                raise BisectError(f"GOOD {sha[:12]}: no path of the selection ran there (run {run.run_id})")
            known = already_failing(run.measurements, self.ceilings, self.gate_cfg)
            j = Judgement(GOOD, "the baseline" + (f"; {len(known)} row(s) failing here are left out" if known else ""))
        else:
            j = judge(self.good_rows, run.measurements, self.ceilings, self.gate_cfg)
        step = {
            "commit": sha,
            "subject": subject,
            "role": role,
            "verdict": j.verdict,
            "reason": j.reason,
            "failing": [asdict(f) for f in j.failing],
            "run_id": run.run_id,
            "seconds": round(time.monotonic() - t0, 1),
        }
        self.say(f"bisect {self.record['id']}: {sha[:12]} is {j.verdict}: {j.reason}")
        self.record["steps"].append(step)
        self.save()
        return step

    def search(self, good: str, bad: str, commits: list[tuple[str, str]]) -> dict:
        subjects = dict(commits)
        shas = [c for c, _ in commits]
        self.record["commits"] = [{"commit": c, "subject": s} for c, s in commits]
        self.save()
        with tempfile.TemporaryDirectory(prefix="sm120-harness-bisect-") as tmp:
            workdir = Path(tmp)
            self.step(good, self.checkout.subject(good), "good", workdir)
            self.record["out_of_reach"] = self._out_of_reach(good, bad)

            def test(i: int) -> str:
                if i < len(shas) - 1:
                    return self.step(shas[i], subjects[shas[i]], "step", workdir)["verdict"]
                last = self.step(bad, subjects[bad], "bad", workdir)
                if last["verdict"] != BAD:
                    what = "cannot run there" if last["verdict"] == SKIP else "passes the gate against GOOD"
                    raise BisectError(f"BAD {bad[:12]} {what} ({last['reason']}): nothing to bisect")
                return BAD

            lo, hi, _ = search(len(shas), test, lambda left: self.say(f"bisect {self.record['id']}: {left} left"))
        candidates = [shas[i] for i in range(lo + 1, hi + 1)]
        first = shas[hi]
        found = next(s for s in reversed(self.record["steps"]) if s["commit"] == first)
        self.record.update(
            first_bad=first if len(candidates) == 1 else None,
            subject=subjects[first] if len(candidates) == 1 else None,
            candidates=candidates,
            failing=found["failing"],
            failing_at=first,
        )
        return self.record

    def _out_of_reach(self, good: str, bad: str) -> list[dict]:
        """What this bisect cannot judge: SGLang paths that did not run at GOOD here, and SGLang's
        prebuilt extension when the range changes its sources."""
        out = []
        o = _outcomes(self.good_rows)
        seen = set()
        for case, impl, status, detail in zip(o["case"], o["impl"], o["status"], o["detail"]):
            key = (case.split("/", 1)[0], impl)
            if status.startswith("skipped") and key not in seen and not _detail(detail).get("golden"):
                seen.add(key)
                out.append({"what": f"{key[0]}/{impl}", "why": status})
        changed = self.checkout.changes(good, bad, PREBUILT)
        if changed:
            try:
                installed = f"{PREBUILT} {metadata.version(PREBUILT)}"
            except metadata.PackageNotFoundError:
                installed = f"no {PREBUILT}"
            out.append(
                {
                    "what": f"{PREBUILT}/",
                    "why": f"the range changes {changed} file(s) there, but every step runs with {installed} as "
                    f"installed: a kernel of that compiled extension is bisected only by rebuilding it per commit",
                }
            )
        return out


def bisect(
    src: Path,
    good: str,
    bad: str,
    *,
    store: str,
    suite: Path,
    only: list[str] | None = None,
    kernels_dir: Path | None = None,
    say: Callable[[str], None] = to_stderr,
) -> dict:
    """Bisect GOOD..BAD of the SGLang checkout `src` with the kernel profile `suite` (see the module
    docstring); returns the record, also written to the store. Raises BisectError or StepError;
    KeyboardInterrupt leaves the record marked `interrupted`."""
    checkout = Checkout.at(src)
    good_sha, bad_sha = checkout.commit(good, "GOOD"), checkout.commit(bad, "BAD")
    history = checkout.history(good_sha, bad_sha)  # a range that cannot be bisected fails before any run

    try:
        profile = load_profile(suite)
        if profile.kernels is None:
            raise BisectError(f"{suite}: the profile has no [kernels] section to bisect with")
        if profile.serving:  # a server would be launched from the installed SGLang, not the commit's
            raise BisectError(f"{suite}: bisect runs kernel profiles; this one has [accuracy] or [perf] too")
        ops = discover(kernels_dir or content_dir("kernels"))
        selections = select(profile, ops, has_gpu=torch.cuda.is_available(), only=only)
    except (ProfileError, CatalogueError, FileNotFoundError) as exc:
        raise BisectError(str(exc)) from exc
    request = Request(profile=profile, store=str(store), kernels_dir=kernels_dir, only=only, say=say)
    b = Bisect(
        checkout,
        str(store),
        request,
        limits.for_profile(profile, selections, audit=False, serving=False),  # as each step's run stores them
        profile.gate,
        say,
        record={
            "id": new_run_id(),
            "sglang_src": str(checkout.top),
            "good": good_sha,
            "bad": bad_sha,
            "profile": str(suite),
            "only": only,
            "status": "running",
            "started_at": now(),
            "ended_at": None,
            "first_bad": None,
            "candidates": [],
            "steps": [],
        },
    )
    # SIGTERM between steps ends the bisect like ^C: worktrees removed, the record marked interrupted
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        b.search(good_sha, bad_sha, history)
        b.record["status"] = "complete"
    except KeyboardInterrupt:
        b.record["status"] = "interrupted"
        say("interrupted: the steps run so far are kept in the store")
        raise
    except (BisectError, StepError) as exc:
        b.record.update(status="error", error=str(exc))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        b.record["ended_at"] = now()
        b.save()
    return b.record


def summary(record: dict) -> str:
    """The result for a person: the first bad commit, the rows failing there, every step."""
    lines = []
    if record.get("first_bad"):
        lines.append(f"first bad commit: {record['first_bad']} {record.get('subject') or ''}".rstrip())
    elif record.get("candidates"):
        lines.append("the first bad commit is one of (the others could not be run):")
        subjects = {c["commit"]: c["subject"] for c in record.get("commits", [])}
        lines += [f"  {c} {subjects.get(c, '')}".rstrip() for c in record["candidates"]]
    failing = record.get("failing") or []
    if failing:
        at = (record.get("failing_at") or "")[:12]
        lines.append(f"failing at {at}:")
        whats: dict[tuple, list[str]] = {}  # a row over its ceiling is often also a change against GOOD
        for f in failing:
            whats.setdefault((f["case"], f["impl"], f["reference"], f["metric"]), []).append(f["what"])
        for (case, impl, ref, metric), what in whats.items():
            lines.append(f"  {case}  {impl}{f' ({ref})' if ref else ''}  {metric}: {'; '.join(what)}")
    lines.append("steps:")
    for s in record["steps"]:
        lines.append(
            f"  {s['verdict']:<4}  {s['commit'][:12]}  {s['role']:<4}  run {s['run_id']}  {s['seconds']:g} s  "
            f"{s['subject'][:60]}"
        )
        if s["role"] != "good" and s["verdict"] != GOOD:
            lines.append(f"        {s['reason']}")
    for o in record.get("out_of_reach") or []:
        lines.append(f"out of reach: {o['what']}: {o['why']}")
    return "\n".join(lines)

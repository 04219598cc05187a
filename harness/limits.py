"""What a run is judged against, resolved in this one place: when it runs, every limit that applies to it
(the op's DTYPE defaults, the op's own CEILINGS, the profile's overrides, the SM120 audit's limits,
upstream's GSM8K floor) is written into its run.json, and every reader (the run's exit code, the terminal
summary, its page, the site, the gate, bisect) judges it with those.

    limits = {key: {metric: limit}}   key: an op, or a whole case (`gsm8k/run_eval`) with a limit of its own
"""

from __future__ import annotations

from pathlib import Path

from harness.audit import sm120
from harness.content import content_dir
from harness.parity.catalogue import CatalogueError, discover
from harness.profile import Profile, Selection, select
from harness.results import metrics as M
from harness.results.store import Run

Limits = dict[str, dict[str, float]]


def for_profile(profile: Profile, selections: list[Selection], *, audit: bool, serving: bool) -> Limits:
    """The limits of a run of `profile`: each selected op's (with the audit's on an audit run), and the
    serving suites' floor."""
    extra = sm120.CEILINGS if audit else {}
    limits = {s.op.name: {**extra, **s.ceilings} for s in selections}
    if serving and profile.accuracy is not None and profile.accuracy.run_eval:
        limits["gsm8k/run_eval"] = {M.GSM8K_ACC: profile.accuracy.run_eval["floor"]}  # upstream's gate
    return limits


def known(selections: list[Selection]) -> list[dict]:
    """The known findings of the selected ops (their KNOWN), as the run stores them."""
    return [k for s in selections for k in s.op.known]


def unjudged(selections: list[Selection]) -> dict[str, dict[str, str]]:
    """Per selected op, the figures its op file says no limit judges, and why (its UNJUDGED)."""
    return {s.op.name: dict(getattr(s.op.module, "UNJUDGED", {})) for s in selections}


def of_run(run: Run, *, profile: Profile | None = None, kernels_dir: Path | None = None) -> Limits:
    """The limits stored with `run`. A run stored before its limits were is judged by `profile` where one
    is given (its ops selected as on the machine the run measured), else by the op files' own limits
    (DTYPE defaults and CEILINGS) and the audit's: a profile's overrides are not known then."""
    stored = run.manifest.get("limits")
    if isinstance(stored, dict):
        return stored
    try:
        ops = discover(kernels_dir or content_dir("kernels"))
    except (CatalogueError, FileNotFoundError):
        return {}
    if profile is not None and profile.kernels is not None:
        has_gpu = bool((run.manifest.get("fingerprint", {}).get("gpu") or {}).get("count"))
        return for_profile(profile, select(profile, ops, has_gpu=has_gpu), audit=True, serving=False)
    return {name: {**sm120.CEILINGS, **op.ceilings} for name, op in ops.items()}

"""Where a run's seconds go, the caches a second run reuses, and the work spread over two slots of one
device: balanced by the previous run's seconds, with every drift figure the same as on one slot."""

import json
import re

import pytest

from harness.profile import ProfileError, load_profile
from tests.conftest import OPS, engine, write_profile

PROFILE = """
name = "durations"
[kernels]
cases = ["tiny"]
[kernels.ops.toy_durations]
[kernels.ops.toy_compile]
"""


OP = "toy_durations"


def _run(tmp, cache, slots: int):
    """The engine itself (harness.run.execute): what it said, and the run."""
    prof = write_profile(tmp / "p.toml", PROFILE)
    store = tmp / "runs"
    before = {d.name for d in store.iterdir()} if store.exists() else set()
    outcome, said = engine(
        env={"SM120_HARNESS_CACHE": str(cache), "SM120_HARNESS_SLOTS": str(slots)},
        profile=prof,
        store=str(store),
        kernels_dir=OPS,
        only=["toy_durations", "toy_compile"],
    )
    assert outcome.code == 0, said[-3000:]
    assert {d.name for d in store.iterdir()} - before == {outcome.run.run_id}
    return said, outcome.run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One slot with cold caches, then two slots of the CPU with the caches the first left."""
    tmp = tmp_path_factory.mktemp("speed")
    return _run(tmp, tmp / "cache", 1), _run(tmp, tmp / "cache", 2)


def _wall(run) -> dict:
    m = run.measurements
    w = m[m["metric"].str.startswith("wall_")]
    return {
        (c, i, metric): (v, json.loads(d))
        for c, i, metric, v, d in zip(w["case"], w["impl"], w["metric"], w["value"], w["detail"])
    }


def test_every_path_says_where_its_seconds_went(runs):
    (said, first), _ = runs
    wall = _wall(first)
    for path in ("a", "b", "c", "d"):
        total = wall[(OP, path, "wall_total_s")][0]
        # the worker's parts; the harness measures drift beside it, as the worker goes on
        parts = sum(wall[(OP, path, f"wall_{p}_s")][0] for p in ("startup", "inputs", "jit", "call", "timing"))
        assert 0 < parts <= total * 1.01, (path, parts, total)
    # path a sleeps 1 s a call: 2 cases, 2 s of call; the first case is called again to measure its
    # steady state, 1 s counted with the timing; the first call is no slower, so no JIT
    a = {p: wall[(OP, "a", f"wall_{p}_s")][0] for p in ("call", "timing", "jit")}
    assert 1.9 < a["call"] < 2.6 and 0.95 < a["timing"] < 1.4 and a["jit"] < 0.3, a
    assert wall[(OP, "a", "wall_total_s")][1]["workers"] == 1
    assert "where the time went" in said and "toy_durations" in said
    page = (first.dir / "artifacts" / "report.html").read_text()
    assert "Where the time went" in page


def test_second_run_reuses_the_input_cache(runs):
    (_, first), (_, second) = runs
    hits = lambda run, k: sum(d[k] for (_, _, m), (_, d) in _wall(run).items() if m == "wall_total_s")  # noqa: E731
    # toy_durations: 2 cases x 5 paths; toy_compile: 1 case x 2 paths
    assert hits(first, "input_builds") >= 3 and hits(first, "input_hits") + hits(first, "input_builds") == 12
    assert hits(second, "input_builds") == 0 and hits(second, "input_hits") == 12
    cache = second.manifest["cache"]
    assert cache["from"] == "SM120_HARNESS_CACHE"
    assert cache["before"]["inputs"] == cache["after"]["inputs"] and cache["after"]["inputs"]["files"] == 3
    assert first.manifest["cache"]["before"]["inputs"]["files"] == 0


def test_two_slots_balanced_by_the_previous_run(runs):
    (_, first), (_, second) = runs
    plan = second.manifest["schedule"]
    assert plan["planned_from"] == f"run {first.run_id}"
    assert len(plan["slots"]) == 2 and {u["from"] for u in plan["plan"]} == {f"run {first.run_id}"}
    estimates = [u["estimate_s"] for u in plan["plan"]]
    assert estimates == sorted(estimates, reverse=True)  # longest first
    busy = list(plan["busy_s"].values())
    assert min(busy) > 0.6 * max(busy), busy
    one = first.manifest["schedule"]
    assert plan["makespan_s"] < 0.85 * one["makespan_s"], (plan["makespan_s"], one["makespan_s"])
    assert {u["slot"] for u in plan["ran"]} == set(plan["slots"])


def test_two_slots_give_the_same_figures_as_one(runs):
    (_, first), (_, second) = runs

    def drift(run):
        m = run.measurements
        m = m[(m["metric"] != "outcome") & ~m["metric"].str.startswith("wall_")]
        return {(c, i, r, k): v for c, i, r, k, v in zip(m["case"], m["impl"], m["reference"], m["metric"], m["value"])}

    a, b = drift(first), drift(second)
    assert len(a) > 20 and a == b


def test_second_run_finds_the_triton_cache(runs):
    """Triton's cache is in the folder: what the first run compiled, the second finds (no new file)."""
    (_, first), (_, second) = runs
    one, two = first.manifest["cache"], second.manifest["cache"]
    assert one["before"]["triton"]["files"] == 0 and one["after"]["triton"]["files"] > 0
    assert two["before"]["triton"] == two["after"]["triton"] == one["after"]["triton"]


@pytest.mark.parametrize(
    "line,field",
    [("slots = 0", "[kernels].slots"), ("slots = true", "[kernels].slots"), ('cache_dir = ""', "[kernels].cache_dir")],
)
def test_profile_slots_and_cache_dir_are_checked(tmp_path, line, field):
    prof = write_profile(tmp_path / "p.toml", f'name = "x"\n[kernels]\n{line}\n')
    with pytest.raises(ProfileError, match=f"p.toml: {re.escape(field)}: "):
        load_profile(prof)

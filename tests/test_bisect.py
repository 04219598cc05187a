"""bisect: a real git history of SGLang 0.5.23's hash_topk Triton kernel, a numeric fault planted in it
and the module deleted in a later commit; the bisect names the fault's commit, skips the deletion,
and never touches the user's working tree. The verdict and the search order on their own, on rows."""

import json
import subprocess

import pandas as pd
import pytest

from harness.history.bisect import BAD, GOOD, SKIP, BisectError, judge, next_pick, search, summary
from harness.results.gate import GateConfig
from harness.results.store import list_bisects, list_runs, load_run, row
from tests.conftest import cli, needs_sglang, write_profile
from tests.sglang_history import FAULTY, PROFILE, SUBJECTS, build

# the commits after the base: the fault first, so the deletion lies between it and BAD; the search
# tests the deletion first (the middle), and a bisect that took it for good would blame `restore`
CHANGES = ["fault", "delete", "restore", "prebuilt"]


@pytest.fixture(scope="module")
def bisected(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("bisect")
    repo = tmp / "sglang"
    shas = build(repo, CHANGES)
    (repo / "README.md").write_text("a change of the user's, not committed\n")
    prof = write_profile(tmp / "p.toml", PROFILE)
    store = tmp / "runs"
    r = cli(
        ["bisect", shas[0], "main", "--sglang-src", str(repo), "--suite", str(prof), "--store", str(store), "--json"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return repo, shas, store, json.loads(r.stdout), r


def test_names_the_commit_that_planted_the_fault(bisected):
    repo, shas, _, result, _ = bisected
    fault = shas[1 + CHANGES.index("fault")]
    assert result["first_bad"] == fault
    assert result["subject"] == SUBJECTS["fault"]
    assert result["candidates"] == [fault]
    failing = {(f["case"], f["impl"], f["metric"]) for f in result["failing"]}
    assert ("hash_topk/tiny_t1_s0", "sglang.triton", "calc_diff") in failing
    assert (
        FAULTY
        in subprocess.run(["git", "-C", str(repo), "show", fault], capture_output=True, text=True, check=True).stdout
    )


def test_the_printed_result(bisected):
    _, shas, _, result, _ = bisected
    text = summary(result)
    assert text.startswith(f"first bad commit: {result['first_bad']} {SUBJECTS['fault']}\n")
    assert "  hash_topk/tiny_t1_s0  sglang.triton (fp64)  calc_diff: " in text
    assert f"  skip  {shas[1 + CHANGES.index('delete')][:12]}  step" in text
    assert "out of reach: sgl-kernel/: the range changes 1 file(s) there" in text


def test_the_commit_that_deletes_the_module_is_skipped_not_blamed(bisected):
    _, shas, _, result, _ = bisected
    verdicts = {s["commit"]: s for s in result["steps"]}
    deleted = verdicts[shas[1 + CHANGES.index("delete")]]
    assert deleted["verdict"] == SKIP
    assert "absent(sglang/kernels/ops/moe/triton_hash_topk.py not in SGLang" in deleted["reason"]
    assert deleted["failing"] == []
    assert verdicts[shas[0]]["verdict"] == GOOD
    # BAD needs no run of its own once a commit before it is bad
    assert [s["role"] for s in result["steps"]] == ["good", "step", "step"]


def test_every_step_is_a_run_tagged_with_its_bisect(bisected):
    _, _, store, result, r = bisected
    runs = {run.run_id: run for run in list_runs(store)}
    assert set(runs) == {s["run_id"] for s in result["steps"]}
    for s in result["steps"]:
        m = runs[s["run_id"]].manifest
        assert m["bisect"] == {"id": result["id"], "commit": s["commit"], "role": s["role"]}
        assert m["fingerprint"]["sglang_commit"] == s["commit"]
    assert list_bisects(store) == [result]
    out_of_reach = {o["what"]: o["why"] for o in result["out_of_reach"]}
    assert "hash_topk/sglang.cuda" in out_of_reach  # no GPU here
    assert "the range changes 1 file(s) there" in out_of_reach["sgl-kernel/"]
    assert result["status"] == "complete" and r.stdout.count("\n") == 1  # stdout: the JSON alone


def test_the_users_checkout_is_left_as_it_was(bisected):
    repo, shas, _, _, _ = bisected
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True).stdout  # noqa: E731
    assert git("rev-parse", "HEAD").strip() == shas[-1]
    assert git("status", "--porcelain").strip() == "M README.md"
    assert len(git("worktree", "list").splitlines()) == 1


def test_a_range_that_cannot_be_bisected_is_refused_before_any_run(tmp_path):
    needs_sglang()
    repo = tmp_path / "sglang"
    shas = build(repo, ["touch"])
    prof = write_profile(tmp_path / "p.toml", PROFILE)
    r = cli(["bisect", shas[1], shas[0], "--sglang-src", str(repo), "--suite", str(prof)])
    assert r.returncode == 2 and "is not an ancestor of BAD" in r.stderr
    r = cli(["bisect", "v9", shas[0], "--sglang-src", str(repo), "--suite", str(prof)])
    assert r.returncode == 2 and "GOOD 'v9': not a commit" in r.stderr


# ---------------------------------------------------------------------------------------- on rows


def _outcome(run, status="ok", error=None, impl="sglang.triton", **detail):
    detail = {"error": error, **detail} if error else detail
    return row(run, "kernels", "op/c", "v1", impl, "outcome", 1.0, unit="s", status=status, detail=detail)


def _drift(run, value, impl="sglang.triton"):
    return row(run, "kernels", "op/c", "v1", impl, "calc_diff", value, reference="fp64")


CEILINGS = {"op": {"calc_diff": 1e-9}}


def _judge(good, step):
    return judge(pd.DataFrame(good), pd.DataFrame(step), CEILINGS, GateConfig())


def test_verdicts():
    good = [_outcome("A"), _drift("A", 1e-15)]
    assert _judge(good, [_outcome("B"), _drift("B", 2e-15)]).verdict == GOOD
    bad = _judge(good, [_outcome("B"), _drift("B", 1e-3)])
    assert bad.verdict == BAD and {f.metric for f in bad.failing} == {"calc_diff"}
    gone = _judge(good, [_outcome("B", "skipped(sglang/x.py does not exist in this SGLang version)")])
    assert gone.verdict == SKIP and "does not exist" in gone.reason
    broken = _judge(good, [_outcome("B", "failed", "ImportError: cannot import name 'f' from 'sglang.x'")])
    assert broken.verdict == SKIP and broken.failing == []
    # a kernel that raises is a regression, not a commit the harness cannot run
    assert _judge(good, [_outcome("B", "failed", "RuntimeError: shape mismatch")]).verdict == BAD


def test_a_worker_that_crashes_while_importing_sglang_is_a_skip(tmp_path):
    """A commit whose kernel module kills the process at import (SIGSEGV) cannot be run here: the
    worker says what it was importing, and the verdict is skip; a crash after the import is bad."""
    needs_sglang()
    repo = tmp_path / "sglang"
    build(repo, ["segfault"])
    prof = write_profile(tmp_path / "p.toml", PROFILE)
    env = {"SM120_HARNESS_SGLANG_SRC": str(repo / "python")}
    cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs"), "--only", "hash_topk"], env=env)
    m = load_run(next((tmp_path / "runs").iterdir())).measurements
    o = m[(m["metric"] == "outcome") & (m["impl"] == "sglang.triton")].iloc[0]
    detail = json.loads(o["detail"])
    assert o["status"] == "crashed" and detail["importing"] == "sglang/kernels/ops/moe/triton_hash_topk.py"
    assert "SIGSEGV" in detail["error"] and "while importing" in detail["error"]
    step = _judge([_outcome("A")], [_outcome("B", o["status"], detail["error"], importing=detail["importing"])])
    assert step.verdict == SKIP and "SIGSEGV" in step.reason
    assert _judge([_outcome("A")], [_outcome("B", "crashed", "worker killed by signal 11 (SIGSEGV)")]).verdict == BAD


def test_what_already_fails_at_good_is_no_verdict():
    good = [_outcome("A"), _drift("A", 1e-3), _outcome("A", "failed", "ValueError: x", impl="sglang.torch")]
    step = [_outcome("B"), _drift("B", 1.2e-3), _outcome("B", "failed", "ValueError: x", impl="sglang.torch")]
    assert _judge(good, step).verdict == GOOD
    # but the gate's judgement against GOOD holds on any row: ten times GOOD's drift is a regression
    worse = _judge(
        good, [_outcome("B"), _drift("B", 1e-2), _outcome("B", "failed", "ValueError: x", impl="sglang.torch")]
    )
    assert worse.verdict == BAD and [(f.impl, f.metric, f.what) for f in worse.failing] == [
        ("sglang.triton", "calc_diff", "0.001 -> 0.01")
    ]
    # a path that did not run at GOOD either is no reason to skip
    assert _judge([_outcome("A", "skipped(needs a CUDA GPU)")], [_outcome("B", "skipped(x)")]).verdict == GOOD


def test_search_order():
    # GOOD is -1, BAD the last index: the middle first, around skipped commits nearest it
    assert next_pick(-1, 4, set()) == 2
    assert next_pick(-1, 4, {2}) == 1
    assert next_pick(1, 4, {2}) == 3
    assert next_pick(1, 3, {2}) is None
    assert next_pick(-1, 0, set()) is None


def test_the_site_links_the_bisect_its_steps_and_its_result(bisected, tmp_path):
    from harness.pages.site import build

    _, shas, store, result, _ = bisected
    index = build(store, tmp_path / "site").read_text()
    assert f'href="bisects/{result["id"]}.html"' in index and SUBJECTS["fault"] in index
    page = (tmp_path / "site" / "bisects" / f"{result['id']}.html").read_text()
    assert f"First bad commit: <code>{result['first_bad']}</code>" in page
    for s in result["steps"]:
        assert f'href="../runs/{s["run_id"]}.html"' in page
        assert (tmp_path / "site" / "runs" / f"{s['run_id']}.html").is_file()
    assert "Latest run against the previous one" not in index  # steps are no history
    assert shas[1 + CHANGES.index("restore")][:12] in page and "not tested" in page


def _search(verdicts: str):
    """search() over commits whose verdicts are given, one letter each (g, b, s); BAD is the last."""
    tested = []

    def test(i):
        tested.append(i)
        return {"g": GOOD, "b": BAD, "s": SKIP}[verdicts[i]]

    lo, hi, skipped = search(len(verdicts), test)
    return lo, hi, skipped, tested


def test_search():
    assert _search("ggbbb") == (1, 2, set(), [2, 1])  # BAD (4) never run: 2 is bad already
    assert _search("gggb") == (2, 3, set(), [1, 2, 3])  # the search ends on BAD: it is run, last
    lo, hi, skipped, _ = _search("gsbb")  # the skipped 1 leaves 1 and 2 as candidates
    assert (lo, hi, skipped) == (0, 2, {1})
    with pytest.raises(BisectError, match="BAD is good"):
        _search("ggg")
    with pytest.raises(BisectError, match="BAD is skip"):
        _search("gs")

"""`sm120-harness run` with no arguments, as a new user runs it: the smoke profile on this CPU, SGLang's
real Triton MLA kernel under the interpreter against the fp64 oracle, a run in ./runs and its page."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.parity.catalogue import load_op_file
from harness.results.store import list_runs
from tests.conftest import ROOT, cli, needs_sglang

TINY_MLA = [c for c in load_op_file(ROOT / "kernels" / "mla_sparse_decode.py").module.cases() if "tiny" in c.tags]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU host runs the flash shapes instead: tests/test_gpu.py")
    needs_sglang()
    cwd = tmp_path_factory.mktemp("user")
    r = cli(["run"], cwd=cwd)
    return r, cwd


def test_exit_0_and_the_run_id_last(smoke):
    r, cwd = smoke
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = list_runs(cwd / "runs")
    assert r.stdout.strip().splitlines()[-1] == run.run_id
    assert run.status == "complete"
    assert run.manifest["profile"]["name"] == "smoke"
    assert run.manifest["fingerprint"]["packages"]["sglang"]


def test_real_sglang_kernels_measured_against_the_oracle(smoke):
    _, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    m = run.measurements
    m = m[m["case"].str.startswith("mla_sparse_decode/")]
    calc = m[(m["metric"] == "calc_diff") & (m["reference"] == "fp64")]
    n = len(TINY_MLA)
    for impl in ("sglang.triton", "sglang.torch"):
        values = calc[calc["impl"] == impl]["value"]
        assert len(values) == n and (values > 0).all() and (values < 1e-5).all(), (impl, list(values))
    lse = m[m["metric"].isin(["lse.max_abs", "lse_with_sink.max_abs"]) & (m["impl"] == "sglang.triton")]
    assert len(lse) == n and (lse["value"] < 1e-4).all()


def test_gpu_only_paths_skipped_and_gpu_goldens_replayed_from_the_store(smoke):
    """flashinfer.sm120 cannot run here and is skipped with the reason; the FlashMLA and FlashInfer
    goldens cannot run either, so their outputs captured on an H100 (golden/) stand in, verified."""
    _, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    m = run.measurements
    m = m[m["case"].str.startswith("mla_sparse_decode/")]
    o = m[m["metric"] == "outcome"]
    status = dict(zip(o["impl"], o["status"]))
    assert status["flashinfer.sm120"] == "skipped(needs a CUDA GPU: sm_120, sm_121)"
    for golden in ("flashmla.legacy", "flashinfer.fa2"):
        rows = o[o["impl"] == golden]
        assert set(rows["status"]) == {"ok"}
        assert all(json.loads(d)["source"].startswith("stored:") for d in rows["detail"])
        ratio = m[(m["metric"] == "rmse_ratio") & (m["reference"] == golden) & (m["impl"] == "sglang.triton")]
        assert len(ratio) == len(TINY_MLA) and (ratio["value"] > 0).all()
        assert all(json.loads(d)["reference_source"].startswith("stored:") for d in ratio["detail"])
    assert all(json.loads(d)["digest"] for d in o[o["status"] == "ok"]["detail"])


def test_html_page(smoke):
    _, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    page = (run.dir / "artifacts" / "report.html").read_text()
    assert run.run_id in page and "sglang.triton" in page and "tiny_b3_h4_swa64_c4x64" in page
    assert "Triton under its interpreter" in page


def test_runs_lists_it(smoke):
    _, cwd = smoke
    r = cli(["runs"], cwd=cwd)
    assert r.returncode == 0 and "complete" in r.stdout and "smoke" in r.stdout


def test_the_installed_console_script(smoke):
    """`sm120-harness`, the entry point pyproject's [project.scripts] installs, in a process of its own."""
    _, cwd = smoke
    script = Path(sys.executable).with_name("sm120-harness")
    if not script.is_file():
        if os.environ.get("CI"):
            pytest.fail("the harness is not installed; CI must install it (pip install -e .)")
        pytest.skip("the harness is not installed (pip install -e .)")
    r = subprocess.run([str(script), "runs", "--json"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = list_runs(cwd / "runs")
    assert [m["run_id"] for m in json.loads(r.stdout)] == [run.run_id]


def test_the_run_stores_its_coverage_and_says_what_is_not_covered(smoke):
    """Every kernel run stores a coverage row per kernel group of the inventory; the console and the page
    name the groups nothing checks."""
    from harness.parity.coverage import load_inventory
    from tests.conftest import ROOT

    r, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    cov = run.measurements[run.measurements["suite"] == "coverage"]
    groups = load_inventory(ROOT / "kernels" / "inventory" / "sglang-0.5.23.toml").groups
    assert len(cov) == len(groups) and set(cov["metric"]) == {"functions_covered"}
    details = [json.loads(d) for d in cov["detail"]]
    nothing = [d["group"] for d in details if d["status"] == "not"]
    assert all(v == 0 for v, d in zip(cov["value"], details) if d["status"] == "not")
    assert all(0 < v for v, d in zip(cov["value"], details) if d["status"] != "not")
    for name in nothing:  # the summary is said on stderr (stdout has the run id only)
        assert any(line.startswith("  not covered: ") and line.endswith(name) for line in r.stderr.splitlines())
    page = (run.dir / "artifacts" / "report.html").read_text()
    assert "kernel groups covered" in page and all(name in page for name in nothing)


def test_every_figure_is_judged_or_says_why_not(smoke):
    """A drift figure no limit judges is listed on the run page; every one of the default job's must be
    named in its op file's UNJUDGED with the reason (or get a limit)."""
    from harness.results import judge

    _, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    unsaid = [u for u in judge.unjudged(run, run.manifest["limits"]) if not u["why"]]
    assert not unsaid, unsaid
    page = (run.dir / "artifacts" / "report.html").read_text()
    assert "Figures no limit judges" in page


def test_every_path_keeps_the_output_contract_and_repeats_its_bits(smoke):
    """On SGLang 0.5.23 every CPU path returns what production takes and the same bits on a second launch."""
    _, cwd = smoke
    (run,) = list_runs(cwd / "runs")
    m = run.measurements
    for metric in ("contract_violations", "nondeterministic"):
        rows = m[(m["metric"] == metric) & (m["status"] == "ok")]
        assert len(rows) > 50, metric  # measured, not skipped
        bad = rows[rows["value"] != 0]
        assert bad.empty, bad[["case", "impl", "value", "detail"]].to_string()

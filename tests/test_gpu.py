"""On a GPU: the smoke profile at DeepSeek-V4-Flash shapes, with every golden that runs there.
Deselected by default; run with `pytest -m gpu` (or `tox -e gpu`)."""

import pytest

from harness.results.store import list_runs
from tests.conftest import cli, needs_sglang

pytestmark = pytest.mark.gpu
SM120 = {(12, 0), (12, 1)}


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    needs_sglang()
    store = tmp_path_factory.mktemp("gpu") / "runs"
    r = cli(["run", "--store", str(store), "--only", "mla_sparse_decode"])
    (run,) = list_runs(store)
    return r, run, tuple(torch.cuda.get_device_capability(0))


def _outcome(run, impl):
    o = run.measurements
    o = o[(o["metric"] == "outcome") & (o["impl"] == impl)]
    return list(o["status"])


def test_flash_shapes_every_golden_that_runs_here(gpu_run):
    r, run, cap = gpu_run
    assert r.returncode == 0, r.stderr[-4000:]
    assert run.measurements["case"].str.contains("_h64_").any()
    assert set(_outcome(run, "fp64")) == {"ok"}
    assert set(_outcome(run, "flashinfer.fa2")) == {"ok"}
    if cap == (9, 0):
        assert set(_outcome(run, "flashmla.legacy")) == {"ok"}
    if cap in SM120:
        assert set(_outcome(run, "flashinfer.sm120")) == {"ok"}
    else:
        assert all(s.startswith("skipped(runs on sm_120") for s in _outcome(run, "flashinfer.sm120"))


def test_fallbacks_within_ceilings_against_oracle_and_goldens(gpu_run):
    _, run, cap = gpu_run
    m = run.measurements
    for impl in ("sglang.triton", "sglang.torch"):
        assert set(_outcome(run, impl)) == {"ok"}
        calc = m[(m["impl"] == impl) & (m["metric"] == "calc_diff") & (m["reference"] == "fp64")]
        assert len(calc) == 18 and (calc["value"] < 1e-5).all()
        ratio = m[(m["impl"] == impl) & (m["metric"] == "rmse_ratio")]
        goldens = {"flashinfer.fa2"} | ({"flashmla.legacy"} if cap == (9, 0) else set())
        assert set(ratio["reference"]) == goldens and (ratio["value"] < 4).all()


def test_timing_side_by_side_against_the_roofline(tmp_path):
    """Every path timed in one run: samples kept, CUDA graphs taken, the roofline and the ratio to
    each golden kernel stored."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    needs_sglang()
    prof = tmp_path / "t.toml"
    prof.write_text(
        'name = "t"\n[kernels]\ncases = ["b8_h64_swa128_c4x512", "b32_h32_swa128_c4x512"]\n'
        "timing = { repeats = 20, warmup = 3, cuda_graph = true }\n"
    )
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs"), "--only", "mla_sparse_decode"])
    (run,) = list_runs(tmp_path / "runs")
    m = run.measurements
    t = m[m["metric"] == "time_us"]
    timed = {"sglang.triton", "sglang.torch", "flashinfer.fa2"} | (
        {"flashmla.legacy"} if tuple(torch.cuda.get_device_capability(0)) == (9, 0) else set()
    )
    assert set(t["impl"]) == timed, r.stderr[-3000:]
    assert all(len(s) == 20 for s in t["samples"]) and (t["value"] > 0).all()
    assert (m[m["metric"] == "roofline_frac"]["value"].between(0, 1.5)).all()
    ratio = m[(m["metric"] == "time_ratio") & (m["impl"] == "sglang.triton")]
    assert len(ratio) == 2 * (len(timed) - 2) and (ratio["value"] > 0).all()

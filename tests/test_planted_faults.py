"""SGLang's real Triton MLA kernel, under the interpreter, fed the bugs a kernel really has: each
is flagged by the metrics, and the clean kernel is not."""

import pytest

from harness.results.ceilings import breaches, default_ceilings
from tests.conftest import needs_sglang, run_op

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_mla]
"""


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted")
    r, run = run_op(tmp, PROFILE, "planted_mla")
    m = run.measurements
    over = set(breaches(m, {"planted_mla": default_ceilings("bf16")})["impl"])
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    return r, over, {(impl, metric): v for impl, metric, v in zip(m["impl"], m["metric"], m["value"])}


def test_clean_kernel_is_within_the_bf16_ceilings(measured):
    _, over, v = measured
    assert v[("sglang.triton", "calc_diff")] < 1e-5
    assert v[("sglang.triton", "worst_row_calc_diff")] < 5e-5
    assert "sglang.triton" not in over


@pytest.mark.parametrize("fault", ["sink_dropped", "scale_off_by_one", "index_off_by_one"])
def test_fault_is_flagged(measured, fault):
    r, over, v = measured
    clean = v[("sglang.triton", "worst_row_calc_diff")]
    worst = v[(f"planted.{fault}", "worst_row_calc_diff")]
    assert worst > 5e-5, f"{fault}: worst row {worst:.3g} is under the ceiling"
    assert worst > 10 * clean
    assert f"planted.{fault}" in over
    assert r.returncode == 1


def test_dropped_sink_moves_every_row(measured):
    _, _, v = measured
    assert v[("planted.sink_dropped", "calc_diff")] > 1e-3

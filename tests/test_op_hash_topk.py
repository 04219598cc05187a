"""Hash routing through the real CLI engine: SGLang's Triton kernel (and its PyTorch fallback where its
import chain is installed) within the fp32 ceilings and with every expert id right, and the bugs a
hash router really has flagged by the weights' drift or the ids' exact match."""

import pytest

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import breaches
from tests.conftest import OPS, needs_sglang, run_op

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_hash_topk]
"""
T = 64  # tokens of the planted case


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_hash_topk")
    r, run = run_op(tmp, PROFILE, "planted_hash_topk")
    m = run.measurements
    over = set(breaches(m, {"planted_hash_topk": load_op_file(OPS / "planted_hash_topk.py").ceilings})["impl"])
    outcome = m[m["metric"] == "outcome"]
    status = dict(zip(outcome["impl"], outcome["status"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, k): (v, d) for i, k, v, d in zip(m["impl"], m["metric"], m["value"], m["detail"])}
    return r, over, status, values


def test_clean_paths_are_within_the_fp32_ceilings(measured):
    _, over, status, values = measured
    clean = ["sglang.triton"] + (["sglang.torch"] if status.get("sglang.torch") == "ok" else [])
    for impl in clean:
        assert values[(impl, "ids_mismatch")][0] == 0, impl
        assert values[(impl, "calc_diff")][0] < 1e-12, impl
        assert values[(impl, "worst_row_calc_diff")][0] < 1e-12, impl
        assert impl not in over, impl


def test_wrong_scaling_factor_moves_the_shared_weight(measured):
    _, over, _, values = measured
    assert values[("planted.wrong_scaling_factor", "max_abs")][0] == pytest.approx(1.0 - 1.0 / 1.5, rel=1e-6)
    assert values[("planted.wrong_scaling_factor", "ids_mismatch")][0] == 0
    assert "planted.wrong_scaling_factor" in over


def test_softplus_without_sqrt_is_caught_by_the_weights(measured):
    _, over, _, values = measured
    assert values[("planted.softplus_without_sqrt", "worst_row_calc_diff")][0] > 1e-3
    assert "planted.softplus_without_sqrt" in over


def test_wrong_shared_slot_id_is_caught_by_the_ids(measured):
    _, over, _, values = measured
    v, detail = values[("planted.shared_slot_id_wrong", "ids_mismatch")]
    assert v == T and f'"shared": {T}' in detail
    assert values[("planted.shared_slot_id_wrong", "calc_diff")][0] < 1e-12  # the weights are right
    assert "planted.shared_slot_id_wrong" in over


def test_shifted_ids_are_caught_by_the_ids(measured):
    r, over, _, values = measured
    v, detail = values[("planted.ids_shifted", "ids_mismatch")]
    assert v == 6 * T and '"shared": 0' in detail
    assert "planted.ids_shifted" in over
    assert r.returncode == 1

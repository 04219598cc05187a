"""The final mHC head (kernels/mhc_head.py): the oracle against a second formulation built from the other
mHC ops' oracles and hand-checked rows, and through the real CLI engine SGLang's Triton kernel, the
model's hc_head and SGLang's torch reference within the bf16 ceilings while one-line edits of a copy of
the kernel's source are flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_mhc_head"


@pytest.fixture(scope="module")
def head():
    return load_op_file(ROOT / "kernels" / "mhc_head.py").module


def test_oracle_is_pre_norm_then_sigmoid_then_combine(head):
    """mhc_pre_norm's mixes (4 rows of hc_fn) -> sigmoid gate + eps -> mhc_combine's weighted sum."""
    pre_norm = load_op_file(ROOT / "kernels" / "mhc_pre_norm.py").module
    combine = load_op_file(ROOT / "kernels" / "mhc_combine.py").module
    case = next(c for c in head.cases() if c.name == "tiny_t4_edge")
    t = head.make_inputs(case, torch.Generator().manual_seed(5))
    mixes = pre_norm.pre_norm_f64(t["x"], t["hc_fn"], 1e-6)
    pre = torch.sigmoid(mixes * t["hc_scale"].double() + t["hc_base"].double()) + 1e-6
    y = combine.oracle({"x_flat": t["x"].flatten(1), "pre": pre}, None)["y"]
    assert torch.allclose(head.oracle(t, case)["y"], y, rtol=1e-12, atol=1e-14)


def test_oracle_by_hand(head):
    """A zero row gives 0 (not NaN); equal streams with hc_fn 0 give x * sum(sigmoid(base) + eps)."""
    case = next(c for c in head.cases() if c.name == "tiny_t2_plain")
    x = torch.zeros(2, 4, 4096, dtype=torch.bfloat16)
    x[1] = 0.5
    base = torch.tensor([0.0, 1.0, -1.0, 2.0])
    t = {"x": x, "hc_fn": torch.zeros(4, 16384), "hc_scale": torch.ones(1), "hc_base": base}
    y = head.oracle(t, case)["y"]
    assert float(y[0].abs().max()) == 0.0 and not y.isnan().any()
    want = 0.5 * sum(1 / (1 + math.exp(-b)) + 1e-6 for b in base.tolist())
    assert torch.allclose(y[1], torch.full((4096,), want, dtype=torch.float64), rtol=1e-15)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {impl: set(g["metric"]) for impl, g in over.groupby("impl")}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, k): v for i, k, v in zip(ok["impl"], ok["metric"], ok["value"])}
    return r, flagged, values


@pytest.mark.parametrize("impl", ["sglang.triton", "sglang.model", "sglang.torch"])
def test_clean_paths_are_within_the_bf16_ceilings(measured, impl):
    _, flagged, values = measured
    assert 1e-7 < values[(impl, "calc_diff")] < 1e-5  # one bf16 rounding of the output, not zero
    assert values[(impl, "worst_row_calc_diff")] < 5e-5
    assert values[(impl, "nonfinite_mismatch")] == 0
    assert impl not in flagged


def test_mean_over_one_stream_is_flagged(measured):
    _, flagged, values = measured
    assert values[("planted.mean_over_one_stream", "calc_diff")] > 1e-3
    assert "calc_diff" in flagged["planted.mean_over_one_stream"]


def test_dropped_norm_eps_is_flagged_by_the_padding_row(measured):
    r, flagged, values = measured
    assert values[("planted.norm_eps_dropped", "nonfinite_mismatch")] > 0  # 0 * rsqrt(0) on the zero row
    assert "nonfinite_mismatch" in flagged["planted.norm_eps_dropped"]
    assert r.returncode == 1

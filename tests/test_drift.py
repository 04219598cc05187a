"""Each metric against a value worked out by hand."""

import math

import pytest
import torch

from harness.parity import drift

X = torch.tensor([1.0, 2.0])
Y = torch.tensor([1.0, 3.0])


def test_calc_diff_by_hand():
    # 1 - 2(1*1 + 2*3) / ((1 + 4) + (1 + 9)) = 1 - 14/15
    assert drift.calc_diff(X, Y) == pytest.approx(1 / 15, rel=1e-12)
    assert drift.calc_diff(Y, Y) == 0.0
    assert drift.calc_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert drift.calc_diff(-Y, Y) == pytest.approx(2.0)


def test_cosine_by_hand():
    assert drift.cosine(X, Y) == pytest.approx(7 / math.sqrt(5 * 10), rel=1e-12)
    assert drift.cosine(torch.zeros(2), torch.zeros(2)) == 1.0
    assert drift.cosine(torch.zeros(2), Y) == 0.0


def test_max_abs_and_where():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.5]])
    ref = torch.tensor([[0.0, 1.5], [2.0, 3.0]])
    value, at = drift.max_abs(x, ref)
    assert value == pytest.approx(0.5) and at == [0, 1]  # first of the two 0.5s in row-major order


def test_max_rel_ignores_references_below_the_floor():
    x = torch.tensor([1e-9, 1.1, 2.0])
    ref = torch.tensor([0.0, 1.0, 2.0])
    value, at = drift.max_rel(x, ref, floor=1e-3)
    assert value == pytest.approx(0.1) and at == [1]


def test_frac_outside_uses_isclose_rule():
    ref = torch.tensor([1.0, 1.0, 1.0, 100.0])
    x = torch.tensor([1.05, 1.2, 1.0, 101.0])  # |d| <= 0.1 + 0.01 |ref| ?  yes, no, yes, yes
    assert drift.frac_outside(x, ref, atol=0.1, rtol=0.01) == pytest.approx(1 / 4)


def test_nonfinite_mismatch_counts_each_kind():
    ref = torch.tensor([1.0, math.inf, -math.inf, math.nan, 2.0])
    x = torch.tensor([math.nan, math.inf, math.inf, math.nan, 2.0])
    # nan vs finite, +inf vs -inf: two mismatches; inf==inf and nan==nan agree
    assert drift.nonfinite_mismatch(x, ref) == 2


def test_a_nan_never_hides_in_a_mean():
    ref = torch.tensor([1.0, 2.0, 3.0])
    x = torch.tensor([1.0, math.nan, 3.0])
    assert drift.calc_diff(x, ref) == math.inf
    assert drift.max_abs(x, ref)[0] == math.inf
    assert drift.rmse(x, ref) == math.inf
    assert drift.frac_outside(x, ref, 0.1, 0.1) == pytest.approx(1 / 3)


def test_valid_region_excludes_positions():
    ref = torch.tensor([[1.0, 2.0], [-math.inf, 5.0]])
    x = torch.tensor([[1.0, 2.0], [math.inf, 9.0]])
    valid = torch.tensor([[True], [False]])
    assert drift.nonfinite_mismatch(x, ref, valid) == 0
    assert drift.max_abs(x, ref, valid)[0] == 0.0
    assert drift.nonfinite_mismatch(x, ref) == 1


def test_rmse_and_ratio_by_hand():
    ref = torch.tensor([0.0, 0.0, 0.0, 0.0])
    cand = torch.tensor([1.0, -1.0, 1.0, -1.0])  # rmse 1
    golden = torch.tensor([0.5, 0.5, -0.5, -0.5])  # rmse 0.5
    assert drift.rmse(cand, ref) == pytest.approx(1.0)
    assert drift.rmse_ratio(cand, golden, ref) == pytest.approx(2.0)
    assert drift.rmse_ratio(ref, ref, ref) == 1.0
    assert drift.rmse_ratio(cand, ref, ref) == math.inf


def test_worst_row_finds_the_row_a_local_fault_touches():
    ref = torch.ones(3, 4)
    x = ref.clone()
    x[2, 0] = 3.0  # row 2: 1 - 2*(3+3)/((9+3) + 4) = 1 - 12/16
    value, at = drift.worst_row_calc_diff(x, ref)
    assert value == pytest.approx(0.25) and at == [2]
    # the global figure dilutes the same fault: 1 - 2*14/((9+11)+12)
    assert drift.calc_diff(x, ref) == pytest.approx(1 - 28 / 32)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        drift.calc_diff(torch.zeros(2, 3), torch.zeros(3, 2))


def test_computed_in_float64():
    # in bf16 or fp32 these two vectors are identical; in fp64 they are not
    ref = torch.full((4,), 1.0, dtype=torch.float64)
    x = ref + 1e-12
    assert 0 < drift.max_abs(x, ref)[0] < 1e-11

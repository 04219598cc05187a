"""The statistics against values worked by hand or printed in textbooks."""

import math
import random

import pytest

from harness.results import stats


def test_mann_whitney_small_exact_case_by_hand():
    # a = [1, 2, 3], b = [4, 5, 6]: U = 0, mu = 4.5, var = 3*3*7/12 = 5.25
    # z = (4.5 - 0.5) / sqrt(5.25) = 1.7457, two-sided p = 0.0809
    assert stats.mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0809, abs=5e-4)


def test_mann_whitney_identical_and_shifted():
    assert stats.mann_whitney_p([5.0] * 10, [5.0] * 10) == 1.0
    rng = random.Random(0)
    a = [100 + rng.gauss(0, 1) for _ in range(50)]
    assert stats.mann_whitney_p(a, [x + 5 for x in a]) < 1e-10
    assert stats.mann_whitney_p(a, [x + 0.01 for x in a]) > 0.5


def test_mann_whitney_ties_use_mid_ranks():
    # a = [1, 1], b = [1, 2]: ranks 2,2,2,4; R1 = 4, U1 = 1, mu = 2; tie term 3^3-3 = 24
    # var = 4/12 * (5 - 24/12) = 1; z = (1 - 0.5)/1 = 0.5; p = 0.617
    assert stats.mann_whitney_p([1, 1], [1, 2]) == pytest.approx(0.6171, abs=5e-4)


def test_wilson_by_hand():
    lo, hi = stats.wilson_interval(81, 100)
    # p = 0.81, z = 1.96: centre = (0.81 + 0.019208)/1.038415 = 0.79835; half = 0.07618
    assert lo == pytest.approx(0.7222, abs=5e-4) and hi == pytest.approx(0.8745, abs=5e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_by_hand():
    # 10 discordant pairs split 1/9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert stats.mcnemar_p(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 0) == 1.0
    assert math.isclose(stats.mcnemar_p(9, 1), stats.mcnemar_p(1, 9))

"""The statistics (scipy.stats underneath) against values worked by hand: Mann-Whitney by enumerating
every split of the pooled samples, McNemar by summing binomial terms, Wilson by its closed form. Each
check is shown to catch a wrong implementation (a one-sided p, the normal approximation, scipy's
default method) by running it over one, and today's values are kept where the results must agree (large
samples) and stated where they differ (small samples: the normal approximation was only that)."""

import itertools
import math
import random

import pytest
from scipy import stats as sps

from harness.results import metrics as M
from harness.results import stats

# -- hand-worked references ------------------------------------------------------------------------


def _u(a, b) -> float:
    """Mann-Whitney's U of a: the pairs in which a's sample is the larger, a tie counting half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)


def _mwu_by_enumeration(a, b) -> float:
    """Under the null every split of the pooled samples into len(a) and len(b) is equally likely: count
    the splits whose U is at or below the observed one (at or above), take the smaller share, double it.
    With no ties U's distribution is symmetric and this is the share with |U - mean| at least as large."""
    pooled = [*a, *b]
    observed = _u(a, b)
    us = []
    for chosen in itertools.combinations(range(len(pooled)), len(a)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        us.append(_u([pooled[i] for i in chosen], rest))
    below = sum(1 for u in us if u <= observed)
    above = sum(1 for u in us if u >= observed)
    return min(1.0, 2.0 * min(below, above) / len(us))


def _mcnemar_by_hand(only_a: int, only_b: int) -> float:
    """The flips are n fair coin tosses under the null: twice the binomial tail at the smaller count."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def _wilson_by_hand(k: int, n: int, z: float = stats.Z95) -> tuple[float, float]:
    """The score interval: the p whose normal test at k/n is not rejected, solved as a quadratic."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _normal_approx_p(a, b) -> float:
    """Today's (before scipy) Mann-Whitney p, kept to state where the new values agree and differ: the
    normal approximation with tie and continuity corrections."""
    n1, n2 = len(a), len(b)
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks, ties, i = [0.0] * len(pooled), 0.0, 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2.0 + 1.0
        ties += (j - i + 1) ** 3 - (j - i + 1)
        i = j + 1
    u1 = sum(r for r, (_, g) in zip(ranks, pooled) if g == 0) - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (abs(u1 - n1 * n2 / 2.0) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))


# -- Mann-Whitney ----------------------------------------------------------------------------------


def _small_cases() -> list[tuple[list[float], list[float]]]:
    fixed = [
        ([1, 2, 3], [4, 5, 6]),  # U = 0 in 1 split of C(6,3) = 20: p = 2/20 = 0.1
        ([4, 5, 6], [1, 2, 3]),  # the mirror: U = 9, the same p
        ([1, 2, 3, 4], [5, 6, 7, 8]),  # 1 split of C(8,4) = 70: p = 2/70 = 0.0286
        ([1, 2], [3, 4]),  # 1 of C(4,2) = 6: p = 1/3
        ([1, 2, 3], [4, 5, 6, 7]),  # 1 of C(7,3) = 35: p = 2/35 = 0.0571
        ([1, 2], [3, 4, 5, 6, 7, 8, 9, 10]),  # 1 of C(10,2) = 45: p = 2/45 = 0.0444
        ([1, 3, 5], [2, 4, 6]),  # U = 3: 7 of 20 splits have U <= 3, p = 14/20 = 0.7
        ([1, 2, 4], [3, 5, 6]),  # U = 1: splits with U <= 1 are 2 of 20, p = 0.2
        ([1, 1], [1, 2]),  # mid-ranks 2,2,2,4: U is 1 or 3 in the 6 splits, |U - 2| = 1 always: p = 1
        ([1, 1, 1], [2, 2, 2]),  # ties within each side only: still 1 split of 20, p = 0.1
        ([100, 100, 100, 101], [101, 102, 102, 102]),  # U = 0.5; 2 of 70 splits at or below: p = 4/70
        ([1], [1, 1, 2]),  # a lone sample tied: it sits at or below 3 of the 4 pooled, at or above 3
        ([0], [1, 1, 1, 1, 1, 0, 0]),  # at or below: 3 of 8, at or above: 8 of 8; p = 6/8
        ([5], [1, 2, 3, 4, 5, 6, 7]),
        ([9], [1, 2, 3, 4, 5, 6, 7]),  # beyond all 7: p = 2/8
        ([2.5, 2.5], [2.5, 2.5, 2.5]),  # all equal: p = 1
    ]
    rng = random.Random(7)
    drawn = []
    for _ in range(40):
        n1, n2 = rng.randint(1, 6), rng.randint(1, 6)
        draw = (lambda: float(rng.randint(0, 4))) if rng.random() < 0.6 else rng.random
        drawn.append(([draw() for _ in range(n1)], [draw() + rng.choice([0, 1]) for _ in range(n2)]))
    return [(list(map(float, a)), list(map(float, b))) for a, b in fixed] + drawn


SMALL = _small_cases()


def _mwu_disagreements(p_of) -> list:
    wrong = [(a, b, p_of(a, b), _mwu_by_enumeration(a, b)) for a, b in SMALL]
    return [w for w in wrong if not math.isclose(w[2], w[3], abs_tol=1e-9)]


def test_mann_whitney_is_the_exact_p_of_every_small_case():
    assert any(stats.mann_whitney_method(a, b) == "permutation" for a, b in SMALL)  # the tie cases
    assert any(stats.mann_whitney_method(a, b) == "exact" for a, b in SMALL)
    assert _mwu_disagreements(stats.mann_whitney_p) == []


def _one_sided(a, b):  # the p of "a is smaller" only
    return float(sps.mannwhitneyu(a, b, alternative="less", method="exact").pvalue)


def _scipy_default(a, b):  # method="auto": the normal approximation wherever values tie
    return float(sps.mannwhitneyu(a, b).pvalue)


def _exact_ignoring_ties(a, b):
    return float(sps.mannwhitneyu(a, b, method="exact").pvalue)


@pytest.mark.parametrize("wrong", [_one_sided, _normal_approx_p, _scipy_default, _exact_ignoring_ties])
def test_the_mann_whitney_check_catches_a_wrong_p(wrong):
    assert _mwu_disagreements(wrong)


@pytest.mark.parametrize(
    "a,b,before,now",
    [
        ([1, 2, 3], [4, 5, 6], 0.0809, 2 / 20),
        ([1, 2, 3, 4], [5, 6, 7, 8], 0.0304, 2 / 70),
        ([1, 2], [3, 4], 0.2453, 2 / 6),
        ([1, 2, 3], [4, 5, 6, 7], 0.0518, 2 / 35),
        ([1, 2], [3, 4, 5, 6, 7, 8, 9, 10], 0.0502, 2 / 45),
        ([1, 3, 5], [2, 4, 6], 0.6625, 14 / 20),
        ([1, 1], [1, 2], 0.6171, 1.0),
        ([1, 1, 1], [2, 2, 2], 0.0469, 2 / 20),
        ([100, 100, 100, 101], [101, 102, 102, 102], 0.0325, 4 / 70),
    ],
)
def test_small_samples_differ_from_the_normal_approximation(a, b, before, now):
    """The differences from today's values, stated: the normal approximation is off by up to a third on
    3 or 4 samples a side, either way; 3 against 3 now gives at best 0.1 (was 0.081); tied samples it
    called significant (0.047, 0.033) are not."""
    assert _normal_approx_p(a, b) == pytest.approx(before, abs=5e-5)
    assert stats.mann_whitney_p(a, b) == pytest.approx(now, rel=1e-9)


def test_large_samples_agree_with_the_normal_approximation_of_today():
    rng = random.Random(0)
    for _ in range(100):
        n1, n2 = rng.randint(9, 60), rng.randint(9, 60)
        q = rng.choice([0.5, 0.05, 1e-9])  # coarse values (many ties) to distinct ones
        a = [round(rng.gauss(0, 1) / q) * q for _ in range(n1)]
        b = [round(rng.gauss(rng.choice([0.0, 0.5]), 1) / q) * q for _ in range(n2)]
        assert stats.mann_whitney_method(a, b) == "asymptotic"
        assert stats.mann_whitney_p(a, b) == pytest.approx(_normal_approx_p(a, b), rel=1e-12, abs=1e-15)


def test_mann_whitney_method_chosen():
    assert stats.mann_whitney_method([1, 2, 3], [4, 5, 6]) == "exact"
    assert stats.mann_whitney_method(list(range(8)), list(range(8, 100))) == "exact"  # a side of 8 or fewer
    assert stats.mann_whitney_method(list(range(9)), list(range(9, 18))) == "asymptotic"
    assert stats.mann_whitney_method([1, 1, 2], [3, 4, 5]) == "permutation"
    assert stats.mann_whitney_method([1.0] * 8, [1.0] * 8) == "permutation"  # C(16,8) = 12,870 splits
    assert stats.mann_whitney_method([1.0] * 9, [1.0] * 9) == "asymptotic"  # C(18,9) = 48,620
    assert stats.mann_whitney_method([1.0], [1.0] * 500) == "permutation"  # a lone sample: counted directly


def test_mann_whitney_identical_shifted_and_empty():
    assert stats.mann_whitney_p([5.0] * 10, [5.0] * 10) == 1.0
    assert stats.mann_whitney_p([5.0] * 3, [5.0] * 3) == 1.0
    assert math.isnan(stats.mann_whitney_p([], [1.0]))
    rng = random.Random(0)
    a = [100 + rng.gauss(0, 1) for _ in range(50)]
    assert stats.mann_whitney_p(a, [x + 5 for x in a]) < 1e-10
    assert stats.mann_whitney_p(a, [x + 0.01 for x in a]) > 0.5


def test_ties_never_give_a_p_below_the_least_the_gate_assumes():
    """compare runs the test only where least_p (computed on distinct values) is below ALPHA: that is
    sound only if tied samples can never do better, which the normal approximation broke (0.047 for
    [1, 1, 1] against [2, 2, 2], under 3 against 3's least 0.1)."""
    for a, b in SMALL:
        assert stats.mann_whitney_p(a, b) >= M.least_p(M.MANN_WHITNEY, len(a), len(b)) - 1e-12


# -- least p and the fewest samples ----------------------------------------------------------------


def test_least_p_is_one_split_of_all_doubled():
    for n_a in range(1, 9):
        for n_b in range(1, 9):
            least = M.least_p(M.MANN_WHITNEY, n_a, n_b)
            assert least == pytest.approx(min(1.0, 2 / math.comb(n_a + n_b, n_a)), rel=1e-9)
            if n_a + n_b <= 10:
                assert least == pytest.approx(_mwu_by_enumeration(range(n_a), range(n_a, n_a + n_b)), rel=1e-9)
    assert M.least_p(M.MANN_WHITNEY, 3, 3) == pytest.approx(0.1)  # the README's "at best p=0.1"
    assert M.least_p(M.MANN_WHITNEY, 4, 4) == pytest.approx(0.0286, abs=1e-4)
    assert M.least_p(M.MANN_WHITNEY, 3, 4) > M.ALPHA > M.least_p(M.MANN_WHITNEY, 3, 5)
    assert M.least_p(M.MANN_WHITNEY, 1, 39) == pytest.approx(2 / 40)  # a lone sample needs 40 against it
    assert M.least_p(M.MANN_WHITNEY, 1, 40) == pytest.approx(2 / 41) and 2 / 41 < M.ALPHA
    assert M.least_p(M.MANN_WHITNEY, 2, 7) > M.ALPHA > M.least_p(M.MANN_WHITNEY, 2, 8)  # 2/36, 2/45
    assert math.isnan(M.least_p(M.MANN_WHITNEY, 0, 5))


def test_least_p_of_mcnemar_is_every_question_flipped_one_way():
    for n in range(1, 12):
        assert M.least_p(M.MCNEMAR, n, n) == pytest.approx(2 / 2**n if n > 1 else 1.0)
    assert math.isnan(M.least_p(M.MCNEMAR, 3, 4))  # not the same questions
    with pytest.raises(ValueError, match="unknown test"):
        M.least_p("t_test", 3, 3)


def test_fewest_samples():
    assert M.fewest_samples(M.MANN_WHITNEY) == 4  # 3 a side: 0.1; 4: 0.029
    assert M.fewest_samples(M.MCNEMAR) == 6  # 5 questions: 2/32 = 0.0625; 6: 2/64 = 0.031


# -- McNemar ---------------------------------------------------------------------------------------

MCNEMAR_GRID = [(i, j) for i in range(0, 31) for j in range(0, 31)]


def _mcnemar_disagreements(p_of) -> list:
    return [(i, j) for i, j in MCNEMAR_GRID if not math.isclose(p_of(i, j), _mcnemar_by_hand(i, j), rel_tol=1e-9)]


def test_mcnemar_by_hand():
    # 10 discordant pairs split 1/9: 2 * (C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert stats.mcnemar_p(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_p(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert stats.mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_p(3, 4) == 1.0  # 2 * (1 + 7 + 21 + 35) / 128 = 1
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 0) == 1.0
    assert math.isclose(stats.mcnemar_p(9, 1), stats.mcnemar_p(1, 9))
    assert _mcnemar_disagreements(stats.mcnemar_p) == []  # today's values too: the same sum
    assert stats.mcnemar_p(40, 0) < 1e-11  # the 40 flips of test_compare's gsm8k case: 2 / 2^40


def _mcnemar_one_sided(i, j):
    return float(sps.binomtest(i, i + j, alternative="less").pvalue) if i + j else 1.0


def _mcnemar_mid_p(i, j):  # the observed count's own term halved: not the exact test
    n = i + j
    return _mcnemar_by_hand(i, j) - math.comb(n, min(i, j)) / 2**n if n else 1.0


def _mcnemar_chi2(i, j):  # the asymptotic McNemar, with Edwards' continuity correction
    return float(sps.chi2.sf((abs(i - j) - 1) ** 2 / (i + j), 1)) if i + j else 1.0


@pytest.mark.parametrize("wrong", [_mcnemar_one_sided, _mcnemar_mid_p, _mcnemar_chi2])
def test_the_mcnemar_check_catches_a_wrong_p(wrong):
    assert _mcnemar_disagreements(wrong)


# -- Wilson ----------------------------------------------------------------------------------------

WILSON_GRID = [(k, n) for n in range(1, 21) for k in range(n + 1)] + [(81, 100), (0, 1319), (1253, 1319), (1319, 1319)]


def _wilson_disagreements(interval_of) -> list:
    out = []
    for k, n in WILSON_GRID:
        got, want = interval_of(k, n), _wilson_by_hand(k, n)
        if not all(math.isclose(g, w, abs_tol=1e-12) for g, w in zip(got, want)):
            out.append((k, n, got, want))
    return out


def test_wilson_by_hand():
    lo, hi = stats.wilson_interval(81, 100)
    # p = 0.81, z = 1.96: denom = 1 + 3.8416/100 = 1.038416, centre = (0.81 + 0.019208)/1.038416 = 0.798530,
    # half = 1.96 * sqrt(0.001539 + 0.00009604) / 1.038416 = 0.076322
    assert lo == pytest.approx(0.72221, abs=5e-5) and hi == pytest.approx(0.87485, abs=5e-5)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.wilson_interval(10, 10)[1] == 1.0 and stats.wilson_interval(0, 10)[0] == 0.0
    assert _wilson_disagreements(stats.wilson_interval) == []  # today's closed form, to 1e-12
    z99 = 2.5758293035489004
    assert stats.wilson_interval(81, 100, z=z99) == pytest.approx(_wilson_by_hand(81, 100, z99), abs=1e-12)


def _wald(k, n):
    p, z = k / n, stats.Z95
    return (max(0.0, p - z * math.sqrt(p * (1 - p) / n)), min(1.0, p + z * math.sqrt(p * (1 - p) / n)))


def _scipy_ci(method):
    return lambda k, n: tuple(sps.binomtest(k, n).proportion_ci(method=method))


@pytest.mark.parametrize("wrong", [_wald, _scipy_ci("wilsoncc"), _scipy_ci("exact")], ids=["wald", "wilsoncc", "cp"])
def test_the_wilson_check_catches_a_wrong_interval(wrong):
    assert _wilson_disagreements(wrong)

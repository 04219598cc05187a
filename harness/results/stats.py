"""Statistics for comparing two runs, in one place: is a difference real, or noise? Each test is
scipy.stats's; tests/test_stats.py checks each against values worked by hand.

- Mann-Whitney U, two-sided, for repeated timings and throughputs: no assumption about their
  distribution, robust to the odd slow repeat. Where the samples are small its p-value is exact, as
  `mann_whitney_method` says: scipy's exact distribution of U where no value repeats and a side has at
  most 8 samples; where values tie, U's distribution over every way to split the pooled samples
  between the two sides, enumerated (scipy's "exact" ignores ties, and the normal approximation, which
  scipy's "auto" picks where there are ties, gives p=0.047 for [1, 1, 1] against [2, 2, 2], where no
  split of 3 against 3 is rarer than p=0.1). Larger samples: the normal approximation with tie and
  continuity corrections.
- Wilson score interval for a proportion (an accuracy over n questions);
- McNemar's exact test for the same questions answered by two runs: only the questions that flipped
  carry information, so it sees a 3-point drop that two independent intervals would miss. It is the
  exact binomial test of the flips against an even split.

scipy is imported where a test runs (it takes half a second to import), so what only reads the
names here does not pay for it."""

from __future__ import annotations

import math
from collections.abc import Sequence

# the exact distribution of U (no ties) up to this many samples on the smaller side: scipy's own bound
# for method="auto"
EXACT_SIDE = 8
# with ties, the splits of the pooled samples enumerated at most (8 against 8 is 12,870, about 0.1 s)
EXACT_SPLITS = 20_000
Z95 = 1.959963984540054  # the two-sided 95% quantile of the normal distribution


def mann_whitney_method(a: Sequence[float], b: Sequence[float]) -> str:
    """How `mann_whitney_p` computes the p-value of a and b: "exact" (U's exact distribution, no ties),
    "permutation" (ties: every split of the pooled samples, enumerated) or "asymptotic" (the normal
    approximation, with tie and continuity corrections)."""
    n1, n2 = len(a), len(b)
    if len(set(a) | set(b)) == n1 + n2:  # no value repeats
        return "exact" if min(n1, n2) <= EXACT_SIDE else "asymptotic"
    return "permutation" if min(n1, n2) == 1 or math.comb(n1 + n2, n1) <= EXACT_SPLITS else "asymptotic"


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that samples a and b come from the same distribution."""
    if not len(a) or not len(b):
        return math.nan
    from scipy import stats as sps

    method = mann_whitney_method(a, b)
    if method == "permutation":
        if min(len(a), len(b)) == 1:
            return _lone_sample_p(a, b)
        method = sps.PermutationMethod(n_resamples=math.inf)  # every split: exact, and no randomness
    return float(sps.mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue)


def _lone_sample_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The permutation p where one side is a single sample and values tie (scipy permutes only sides of
    two or more): every place of the lone sample among the pooled ones is equally likely, so the
    one-sided p is the share of the pooled samples at or below it (at or above), doubled."""
    (x,), rest = (a, b) if len(a) == 1 else (b, a)
    pooled = [x, *rest]
    below = sum(1 for v in pooled if v <= x)
    above = sum(1 for v in pooled if v >= x)
    return min(1.0, 2.0 * min(below, above) / len(pooled))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of successes/n, at the confidence of the two-sided normal quantile z."""
    if n == 0:
        return (0.0, 1.0)
    from scipy import stats as sps

    ci = sps.binomtest(successes, n).proportion_ci(confidence_level=math.erf(z / math.sqrt(2.0)), method="wilson")
    return (float(ci.low), float(ci.high))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p: `only_a` questions right in A alone, `only_b` right in B alone."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    from scipy import stats as sps

    return float(sps.binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)

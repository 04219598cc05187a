"""The metric vocabulary: every metric the engine writes or judges, declared once.

For each: its unit, which direction is better, its family, the relative change past which it counts,
the significance test its samples get (and so how many samples a side that test needs), whether it
can carry a limit (a ceiling, or a floor where higher is better), and, for a figure computed from
another one's samples, which one: a derived figure takes the verdict of the measurement it comes from
(one measurement, one verdict). An op's own metrics (a recall, an exact-match count) are not listed:
they are judged as drift figures, with the `better` their rows carry, and their limits are the op's
CEILINGS.

Only this module and the op files spell metric names; everything else imports them from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from harness.results import stats

ALPHA = 0.05  # a change is statistically real below this p-value

# families
TIMING, RATE, THROUGHPUT, LATENCY, ACCURACY, DRIFT, COUNT, WALL = (
    "timing",
    "rate",
    "throughput",
    "latency",
    "accuracy",
    "drift",
    "count",
    "wall",
)
# the families the gate's `perf_regression` applies to
PERF_FAMILIES = frozenset({TIMING, RATE, THROUGHPUT})

# significance tests
MANN_WHITNEY, MCNEMAR = "mann_whitney", "mcnemar"


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    family: str
    change: float  # |b - a| / |a| past which a change counts; inf: never judged on its own
    floor: float = 0.0  # values both below this are noise (a drift of 1e-12 doubling)
    test: str | None = None  # the test its samples get; None: a figure computed once, judged by `change`
    ceiling: bool = False  # can carry a limit
    derived_from: str | None = None  # the metric whose samples it is computed from


# the reference every drift figure is measured against first: the fp64 oracle (each op file has one)
ORACLE = "fp64"

# names: the engine's own metrics
OUTCOME = "outcome"
TIME_US, GBPS, TFLOPS, ROOFLINE_FRAC, TIME_RATIO = "time_us", "gbps", "tflops", "roofline_frac", "time_ratio"
OUTPUT_TOK_S, REQUEST_S = "output_tok_s", "request_s"
# of a kernel group of the forward-path inventory: the share of its functions an op file covers (suite "coverage")
COVERAGE = "functions_covered"
GSM8K_ACC = "gsm8k_acc"
CALC_DIFF, WORST_ROW_CALC_DIFF, COSINE = "calc_diff", "worst_row_calc_diff", "cosine"
MAX_ABS, MAX_REL, FRAC_OUTSIDE_TOL = "max_abs", "max_rel", "frac_outside_tol"
NONFINITE_MISMATCH, RMSE, RMSE_RATIO = "nonfinite_mismatch", "rmse", "rmse_ratio"
# every path, every op: outputs unlike the op's OUTPUTS (dtype, shape); elements that differ between launches
CONTRACT_VIOLATIONS, NONDETERMINISTIC = "contract_violations", "nondeterministic"
STRAY_WRITES = "stray_writes"  # sentinel elements a path's call changed around its guarded buffers
SHARED_BYTES, REGISTERS, SPILL_BYTES = "shared_bytes", "registers", "spill_bytes"
FORBIDDEN_INSTRUCTIONS, KERNELS = "forbidden_instructions", "kernels"
DYNAMIC_SHARED_BYTES, CLUSTER_LAUNCHES = "dynamic_shared_bytes", "cluster_launches"
# where a kernel run's seconds went, per (op, path): wall_total_s and its parts (harness/parity/suite.py)
WALL_PARTS = ("startup", "inputs", "jit", "call", "timing", "drift")


def wall(part: str) -> str:
    """The name of a wall-seconds part: wall("jit") is wall_jit_s; wall("total") the whole unit."""
    return f"wall_{part}_s"


WALL_TOTAL = wall("total")
WALL_METRICS = frozenset(wall(p) for p in ("total", *WALL_PARTS))  # where a run's seconds went
# bench_serving's latencies: <what>_ms_<statistic>, and the key of each in its result JSON
LATENCIES = {"ttft": "ttft_ms", "itl": "itl_ms", "tpot": "tpot_ms", "e2e_latency": "e2e_ms"}
LATENCY_STATS = ("mean", "median", "p90", "p99")


def latency(what: str, stat: str) -> str:
    """A latency metric's name: latency("ttft", "median") is time to first token's median, in ms."""
    return f"{LATENCIES[what]}_{stat}"


# drift figures shown beside calc_diff and judged through it (and worst_row_calc_diff): no limit of their own
DESCRIPTIVE = frozenset({"max_abs", "cosine", "max_rel", "frac_outside_tol", "rmse", "rmse_ratio"})

# the standard drift against a reference (harness/parity/drift.py), the columns of the summary and the page
STANDARD_DRIFT = (CALC_DIFF, WORST_ROW_CALC_DIFF, MAX_ABS, FRAC_OUTSIDE_TOL, COSINE, MAX_REL, NONFINITE_MISMATCH, RMSE)

_DRIFT = dict(family=DRIFT, change=1.0, floor=1e-9, ceiling=True)  # twice as large (or half) is a change
_COUNT = dict(family=COUNT, change=0.0, ceiling=True)  # any change is one
_PERF = dict(change=0.02, test=MANN_WHITNEY)

METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in [
        MetricInfo(OUTCOME, "s", "lower", WALL, math.inf),  # wall seconds, JIT included: never a verdict of its own
        # load and caches move them: they explain a slow run, never a verdict
        *(MetricInfo(wall(p), "s", "lower", WALL, math.inf) for p in ("total", *WALL_PARTS)),
        MetricInfo(TIME_US, "us", "lower", TIMING, **_PERF),
        MetricInfo(GBPS, "GB/s", "higher", RATE, **_PERF, derived_from=TIME_US),
        MetricInfo(TFLOPS, "TFLOP/s", "higher", RATE, **_PERF, derived_from=TIME_US),
        MetricInfo(ROOFLINE_FRAC, "", "higher", RATE, **_PERF, derived_from=TIME_US),
        MetricInfo(TIME_RATIO, "x", "lower", RATE, **_PERF, derived_from=TIME_US),
        MetricInfo(OUTPUT_TOK_S, "tok/s", "higher", THROUGHPUT, **_PERF),
        MetricInfo(REQUEST_S, "req/s", "higher", THROUGHPUT, **_PERF),
        MetricInfo(GSM8K_ACC, "", "higher", ACCURACY, 0.01, test=MCNEMAR, ceiling=True),
        MetricInfo(CALC_DIFF, "", "lower", **_DRIFT),
        MetricInfo(WORST_ROW_CALC_DIFF, "", "lower", **_DRIFT),
        MetricInfo(COSINE, "", "higher", **_DRIFT),
        MetricInfo(MAX_ABS, "", "lower", **_DRIFT),
        MetricInfo(MAX_REL, "", "lower", **_DRIFT),
        MetricInfo(FRAC_OUTSIDE_TOL, "", "lower", **_DRIFT),
        MetricInfo(RMSE, "", "lower", **_DRIFT),
        MetricInfo(RMSE_RATIO, "x", "lower", **_DRIFT),
        MetricInfo(NONFINITE_MISMATCH, "count", "lower", **_COUNT),
        MetricInfo(CONTRACT_VIOLATIONS, "count", "lower", **_COUNT),
        MetricInfo(NONDETERMINISTIC, "count", "lower", **_COUNT),
        MetricInfo(STRAY_WRITES, "count", "lower", **_COUNT),
        MetricInfo(SHARED_BYTES, "B", "lower", **_COUNT),
        MetricInfo(REGISTERS, "count", "lower", **_COUNT),
        MetricInfo(SPILL_BYTES, "B", "lower", **_COUNT),
        MetricInfo(FORBIDDEN_INSTRUCTIONS, "count", "lower", **_COUNT),
        MetricInfo(DYNAMIC_SHARED_BYTES, "B", "lower", **_COUNT),
        MetricInfo(CLUSTER_LAUNCHES, "count", "lower", **_COUNT),
        MetricInfo(KERNELS, "count", "lower", COUNT, 0.0),
        MetricInfo(COVERAGE, "share", "higher", COUNT, 0.0),  # any loss is one; the gate fails on absent paths
        # latencies have samples (one per repeat) but are judged as before: a factor of 2
        *(
            MetricInfo(latency(what, stat), "ms", "lower", LATENCY, 1.0, test=MANN_WHITNEY)
            for what in LATENCIES
            for stat in LATENCY_STATS
        ),
    ]
}


def get(name: str) -> MetricInfo:
    """The declaration of `name`; an op's own metric, or a side output's (`lse.max_abs`), is a drift
    figure (a count where it counts non-finite mismatches)."""
    if name in METRICS:
        return METRICS[name]
    if name.endswith("." + NONFINITE_MISMATCH):
        return MetricInfo(name, "count", "lower", **_COUNT)
    return MetricInfo(name, "", "lower", **_DRIFT)


def family(name: str) -> str:
    return get(name).family


def ceiling_metrics() -> set[str]:
    """The engine's metrics that can carry a limit in any op (an op's CEILINGS add its own)."""
    return {m.name for m in METRICS.values() if m.ceiling and m.family != ACCURACY}


@cache
def least_p(test: str, n_a: int, n_b: int) -> float:
    """The smallest p-value `test` can give with n_a and n_b samples, as harness/results/stats.py
    computes it (scipy.stats): the p of the most extreme outcome. Mann-Whitney: every sample of one side
    beyond every sample of the other, which where the exact distribution applies is 2 / C(n_a + n_b, n_a)
    (3 against 3: 0.1; 4 against 4: 0.029); ties never make that p smaller. McNemar (the same n questions
    answered by both runs): every question flipped the same way, 2 / 2**n."""
    if not n_a or not n_b:
        return math.nan
    if test == MANN_WHITNEY:
        return stats.mann_whitney_p(list(range(n_a)), list(range(n_a, n_a + n_b)))
    if test == MCNEMAR:
        return stats.mcnemar_p(0, n_a) if n_a == n_b else math.nan
    raise ValueError(f"unknown test {test!r}")


def fewest_samples(test: str) -> int:
    """The fewest samples a side (both sides alike) with which `test` can reach ALPHA: Mann-Whitney 4
    (3 a side give at best p=0.1), McNemar 6 questions (5 give at best p=0.0625)."""
    n = 1
    while least_p(test, n, n) >= ALPHA:
        n += 1
    return n


# Where the samples cannot reach ALPHA (least_p above), a change counts only if the two sides' samples
# do not overlap at all (asv's fallback is the same idea: non-overlapping confidence intervals); it needs
# this many a side, since one sample has no spread to tell noise from a change.
FALLBACK_SAMPLES = 2
FALLBACK_RULE = "the repeats of the two runs do not overlap"


def fmt(v: float | None) -> str:
    """A figure as the console, the pages and the Markdown print it."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    if v == 0:
        return "0"
    return f"{v:.2e}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3g}"

"""compare(): A/A gives no regression; each planted change is flagged; a change inside the noise is not."""

import random

import pandas as pd
import pytest

from harness.results.compare import compare, to_markdown
from harness.results.store import row
from tests.conftest import OPS, engine, write_profile


def _frame(rows):
    return pd.DataFrame(rows)


def _timing(run, value_us, spread, n=50, seed=0, metric="time_us", better="lower", case="op/c"):
    rng = random.Random(seed)
    samples = [value_us * (1 + rng.gauss(0, spread)) for _ in range(n)]
    return row(
        run,
        "kernels",
        case,
        "v1",
        "sglang.triton",
        metric,
        sorted(samples)[n // 2],
        unit="us",
        better=better,
        samples=samples,
    )


def _verdict(a, b, metric):
    r = compare(_frame(a), _frame(b))
    return r[r["metric"] == metric].iloc[0]


def test_a_run_against_itself_is_all_same():
    rows = [_timing("A", 100.0, 0.01), row("A", "kernels", "op/c", "v1", "k", "calc_diff", 3e-6, reference="fp64")]
    r = compare(_frame(rows), _frame(rows))
    assert set(r["verdict"]) == {"same"}


def test_two_cpu_runs_of_the_same_code_show_no_change(tmp_path):
    prof = write_profile(
        tmp_path / "p.toml",
        'name = "p"\n[kernels]\ncases = ["tiny"]\n'
        '[kernels.ops.toy_scale]\nimpls = ["good", "off_by_one_row"]\ngoldens = ["fp64"]\n',
    )
    runs = [engine(profile=prof, kernels_dir=OPS, store=str(tmp_path / name))[0].run for name in ("a", "b")]
    r = compare(*(run.measurements for run in runs))
    assert len(r) > 20 and set(r["verdict"]) == {"same"}


def test_kernel_five_percent_slower_is_a_regression():
    v = _verdict([_timing("A", 100.0, 0.005, seed=1)], [_timing("B", 105.0, 0.005, seed=2)], "time_us")
    assert v["verdict"] == "regressed" and v["p_value"] < 1e-6 and v["change"] == pytest.approx(0.05, abs=0.01)


def test_faster_kernel_is_an_improvement():
    v = _verdict([_timing("A", 100.0, 0.005, seed=1)], [_timing("B", 90.0, 0.005, seed=2)], "time_us")
    assert v["verdict"] == "improved"


def test_a_change_inside_the_noise_is_not_flagged():
    # 3% apart on the medians but with 20% noise on every repeat: not significant
    a = [_timing("A", 100.0, 0.20, n=10, seed=3)]
    b = [_timing("B", 103.0, 0.20, n=10, seed=4)]
    assert _verdict(a, b, "time_us")["verdict"] == "same"
    # 1% apart with tight samples: significant, but under the 2% threshold
    a = [_timing("A", 100.0, 0.001, seed=5)]
    b = [_timing("B", 101.0, 0.001, seed=6)]
    assert _verdict(a, b, "time_us")["verdict"] == "same"


def test_throughput_three_percent_lower_with_tight_samples():
    # ten repeats a side: with three, Mann-Whitney's smallest two-sided p is 0.1 and nothing could count
    a = [_timing("A", 1000.0, 0.003, n=10, seed=7, metric="output_tok_s", better="higher", case="perf/c8")]
    b = [_timing("B", 970.0, 0.003, n=10, seed=8, metric="output_tok_s", better="higher", case="perf/c8")]
    assert _verdict(a, b, "output_tok_s")["verdict"] == "regressed"


def test_drift_ten_times_higher_is_a_regression_and_a_small_wobble_is_not():
    a = [row("A", "kernels", "op/c", "v1", "k", "calc_diff", 2e-6, reference="fp64")]
    assert (
        _verdict(a, [row("B", "kernels", "op/c", "v1", "k", "calc_diff", 2e-5, reference="fp64")], "calc_diff")[
            "verdict"
        ]
        == "regressed"
    )
    assert (
        _verdict(a, [row("B", "kernels", "op/c", "v1", "k", "calc_diff", 2.6e-6, reference="fp64")], "calc_diff")[
            "verdict"
        ]
        == "same"
    )


def test_gsm8k_three_points_lower_over_1319_questions_paired():
    rng = random.Random(9)
    a = [1.0 if rng.random() < 0.95 else 0.0 for _ in range(1319)]
    b = list(a)
    right = [i for i, x in enumerate(b) if x == 1.0]
    for i in rng.sample(right, 40):  # 40 of the right answers flip to wrong: about 3 points
        b[i] = 0.0
    mk = lambda run, s: row(
        run,
        "accuracy",
        "gsm8k/lm_eval",
        "v1",
        "server",
        "gsm8k_acc",
        sum(s) / len(s),  # noqa: E731
        better="higher",
        samples=s,
    )
    v = _verdict([mk("A", a)], [mk("B", b)], "gsm8k_acc")
    assert v["verdict"] == "regressed" and v["p_value"] < 1e-6


def test_status_changes_and_alignment():
    ok = row("A", "kernels", "op/c", "v1", "k", "outcome", 1.0, unit="s")
    crashed = row("B", "kernels", "op/c", "v1", "k", "outcome", float("nan"), unit="s", status="crashed")
    assert _verdict([ok], [crashed], "outcome")["verdict"] == "failed"
    assert _verdict([{**crashed, "run_id": "A"}], [{**ok, "run_id": "B"}], "outcome")["verdict"] == "fixed"
    changed_case = {**ok, "run_id": "B", "case_version": "v2"}
    assert _verdict([ok], [changed_case], "outcome")["verdict"] == "not comparable"
    other = row("B", "kernels", "op/d", "v1", "k", "outcome", 1.0, unit="s")
    r = compare(_frame([ok]), _frame([other]))
    assert dict(zip(r["case"], r["verdict"])) == {"op/c": "missing", "op/d": "new"}


def test_markdown_lists_what_changed():
    a = [_timing("A", 100.0, 0.005, seed=1)]
    b = [_timing("B", 110.0, 0.005, seed=2)]
    md = to_markdown(compare(_frame(a), _frame(b)), "B against A")
    assert "1 regressed" in md and "| regressed | op/c | sglang.triton |" in md


def _repeats(run, samples, case="op/c"):
    """A timing with these repeats, its value their median."""
    s = sorted(samples)
    median = (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
    return row(run, "kernels", case, "v1", "sglang.triton", "time_us", median, unit="us", samples=list(samples))


@pytest.mark.parametrize(
    "a,b,p",
    [
        ([100, 101, 102, 103], [110, 111, 112, 113], 2 / 70),  # 4 a side, apart: 1 split of C(8,4)
        ([100, 101, 102], [110, 111, 112, 113, 114], 2 / 56),  # 3 against 5: 1 of C(8,3)
        # 2 against 8: 2/45 = 0.044; the normal approximation's least was 0.0502, so this went to the
        # fallback rule before, and now the test itself judges it
        ([100, 101], [110, 111, 112, 113, 114, 115, 116, 117], 2 / 45),
    ],
)
def test_samples_enough_for_the_exact_test_are_judged_by_it(a, b, p):
    v = _verdict([_repeats("A", a)], [_repeats("B", b)], "time_us")
    assert v["verdict"] == "regressed" and v["p_value"] == pytest.approx(p) and "fallback" not in v["reason"]


@pytest.mark.parametrize(
    "a,b,least",
    [
        ([100, 101, 102], [110, 111, 112], "0.1"),  # 3 a side: at best 2/20 = 0.1 (the approximation: 0.081)
        ([100, 101, 102], [110, 111, 112, 113], "0.057"),  # 3 against 4: 2/35
    ],
)
def test_samples_too_few_for_the_exact_test_fall_back_to_no_overlap(a, b, least):
    v = _verdict([_repeats("A", a)], [_repeats("B", b)], "time_us")
    rule = "by the fallback rule, the repeats of the two runs do not overlap"
    assert v["verdict"] == "regressed"
    assert v["reason"].endswith(f"samples cannot reach p<0.05 (least p {least}); {rule}")
    # overlapping repeats: the rule does not hold, and the change is not confirmed
    v = _verdict([_repeats("A", a)], [_repeats("B", [a[-1], *b[1:]])], "time_us")
    assert v["verdict"] == "same" and v["reason"].startswith("~") and f"least p {least}" in v["reason"]


def test_tied_repeats_are_not_a_change_the_exact_test_cannot_confirm():
    # timings read at 3 us resolution, 4 repeats a side, the medians 6% apart: the normal approximation
    # gave p=0.033 and a regression; over the 70 splits of the pooled repeats, 2 put a's U at or below
    # its 0.5, so p = 4/70 = 0.057: not significant
    a, b = [100, 100, 100, 103], [103, 106, 106, 106]
    v = _verdict([_repeats("A", a)], [_repeats("B", b)], "time_us")
    assert v["verdict"] == "same" and v["p_value"] == pytest.approx(4 / 70)
    assert v["reason"] == f"+{v['change']:.1%} is within the noise (p=0.057)"

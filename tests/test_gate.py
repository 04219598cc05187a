"""The gate: what fails a pull request, what an allowlist lets through until its date, and what it
writes for a pull-request comment."""

import random
from datetime import date

import pandas as pd
import pytest

from harness.profile import ProfileError, load_profile
from harness.results.gate import Allow, GateConfig, gate, markdown
from harness.results.store import row
from tests.conftest import OPS, cli, write_profile

NO_BREACH = pd.DataFrame(columns=["case", "impl", "reference", "metric", "value", "ceiling"])


def _t(run, us, seed):
    rng = random.Random(seed)
    s = [us * (1 + rng.gauss(0, 0.005)) for _ in range(50)]
    return row(run, "kernels", "mla/b8", "v1", "sglang.triton", "time_us", sorted(s)[25], unit="us", samples=s)


def _drift(run, v):
    return row(run, "kernels", "mla/b8", "v1", "sglang.triton", "calc_diff", v, reference="fp64")


def _run(*rows):
    return pd.DataFrame(list(rows))


def test_same_run_passes():
    a = _run(_t("A", 100, 1), _drift("A", 3e-6))
    assert gate(a, a, NO_BREACH, GateConfig()) == []


@pytest.mark.parametrize("candidate,metric", [
    (_run(_t("B", 106, 2), _drift("B", 3e-6)), "time_us"),      # 6% slower, significant
    (_run(_t("B", 100, 2), _drift("B", 3e-5)), "calc_diff"),    # drift 10x
])  # fmt: skip
def test_planted_regressions_fail(candidate, metric):
    a = _run(_t("A", 100, 1), _drift("A", 3e-6))
    (f,) = gate(a, candidate, NO_BREACH, GateConfig())
    assert f.metric == metric and f.allowed_by is None


def test_a_small_significant_slowdown_under_the_threshold_passes():
    a, b = _run(_t("A", 100, 1)), _run(_t("B", 103, 2))  # 3% < 5%
    assert gate(a, b, NO_BREACH, GateConfig()) == []
    assert len(gate(a, b, NO_BREACH, GateConfig(perf_regression=0.02))) == 1


def test_crash_ceiling_and_accuracy_floor_fail():
    a = _run(row("A", "kernels", "mla/b8", "v1", "k", "outcome", 1.0))
    b = _run(
        row("B", "kernels", "mla/b8", "v1", "k", "outcome", float("nan"), status="crashed"),
        row("B", "accuracy", "gsm8k/lm_eval", "v1", "server", "gsm8k_acc", 0.91, better="higher"),
    )
    breach = pd.DataFrame(
        [{"case": "mla/b8", "impl": "k", "reference": "fp64", "metric": "calc_diff", "value": 2e-5, "ceiling": 1e-5}]
    )
    found = gate(a, b, breach, GateConfig(gsm8k_floor=0.93))
    assert len(found) == 3  # the ceiling, the crash, the floor (a single run has no drop to test)
    assert {f.metric for f in found} == {"calc_diff", "outcome", "gsm8k_acc"}
    assert any("under the floor 0.93" in f.what for f in found) and any("crashed" == f.what for f in found)


def test_allowlist_until_its_date():
    a, b = _run(_t("A", 100, 1)), _run(_t("B", 110, 2))
    allow = Allow(case="mla/*", impl="sglang.triton", metric="time_us", until="2026-12-31", why="known noisy runner")
    cfg = GateConfig(allow=[allow])
    (f,) = gate(a, b, NO_BREACH, cfg, today=date(2026, 12, 31))
    assert f.allowed_by == "allowed until 2026-12-31: known noisy runner"
    (f,) = gate(a, b, NO_BREACH, cfg, today=date(2027, 1, 1))
    assert f.allowed_by is None
    md = markdown([f], "B against A")
    assert md.startswith("### FAIL") and "| fail | mla/b8 | sglang.triton |" in md


def test_gate_section_errors_name_the_field(tmp_path):
    f = write_profile(tmp_path / "p.toml", 'name = "p"\n[gate]\nallow = [{ case = "x", until = "soon", why = "w" }]\n')
    with pytest.raises(ProfileError, match=r"\[gate\].allow\[0\].until: expected a date"):
        load_profile(f)
    f = write_profile(tmp_path / "q.toml", 'name = "p"\n[gate]\ndrift_factor = -2\n')
    with pytest.raises(ProfileError, match=r"\[gate\].drift_factor: must be > 0"):
        load_profile(f)


def test_cli_gate_passes_two_runs_of_the_same_code_and_writes_the_step_summary(tmp_path):
    prof = write_profile(
        tmp_path / "p.toml",
        'name = "p"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.toy_scale]\nimpls = ["good"]\ngoldens = ["fp64"]\n',
    )
    for _ in range(2):
        cli(["run", "--suite", str(prof), "--kernels-dir", str(OPS), "--store", str(tmp_path / "runs")])
    first = sorted(p.name for p in (tmp_path / "runs").iterdir())[0]
    summary = tmp_path / "summary.md"
    r = cli(
        [
            "gate",
            "--baseline",
            first,
            "--suite",
            str(prof),
            "--kernels-dir",
            str(OPS),
            "--store",
            str(tmp_path / "runs"),
        ],
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("### PASS") and summary.read_text().startswith("### PASS")
    r = cli(["gate", "--baseline", "nope", "--store", str(tmp_path / "runs")])
    assert r.returncode == 2 and "no run with id" in r.stderr


def test_nightly_runs_audits_gates_and_renders(tmp_path):
    prof = write_profile(
        tmp_path / "n.toml",
        'name = "n"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.toy_scale]\nimpls = ["good"]\ngoldens = ["fp64"]\n',
    )
    args = ["nightly", "--suite", str(prof), "--kernels-dir", str(OPS), "--store", str(tmp_path / "runs")]
    first = cli(args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "### PASS" not in first.stdout  # nothing to gate against on the first night
    second = cli(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "### PASS" in second.stdout
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "run.json").exists()]
    assert len(runs) == 4  # a kernel run and an audit run each night
    assert (tmp_path / "runs" / "site" / "index.html").exists()

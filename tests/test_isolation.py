"""A path that segfaults, hangs, raises or cannot run is recorded as such, and every other path and
case of the run is still measured and stored."""

import json

import pytest

from harness.results.store import load_run
from tests.conftest import OPS, cli, write_profile

PROFILE = """
name = "isolation"
[kernels]
cases = ["tiny"]
timeout_s = 5
[kernels.ops.toy_scale]
impls = ["good", "segfault", "hang", "raises", "unavailable", "off_by_one_row", "sm120_only"]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iso")
    prof = write_profile(tmp / "p.toml", PROFILE)
    r = cli(
        [
            "run",
            "--suite",
            str(prof),
            "--store",
            str(tmp / "runs"),
            "--kernels-dir",
            str(OPS),
            "--only",
            "toy_scale",
            "--json",
        ]
    )
    return r, load_run(next((tmp / "runs").iterdir()))


def _status(run, impl):
    o = run.measurements
    o = o[(o["metric"] == "outcome") & (o["impl"] == impl)]
    return dict(zip(o["case"].str.split("/").str[1], o["status"]))


def test_exit_code_says_something_failed(run):
    r, _ = run
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["exit_code"] == 1  # --json keeps stdout machine-readable


def test_good_path_measured_everywhere(run):
    _, stored = run
    assert _status(stored, "good") == {"n4": "ok", "n8": "ok", "n16": "ok"}
    m = stored.measurements
    calc = m[(m["impl"] == "good") & (m["metric"] == "calc_diff")]
    assert len(calc) == 3 and (calc["value"] < 1e-12).all()


def test_segfault_is_crashed_and_later_cases_still_run(run):
    _, stored = run
    assert _status(stored, "segfault") == {"n4": "ok", "n8": "crashed", "n16": "ok"}
    m = stored.measurements
    row = m[(m["impl"] == "segfault") & (m["metric"] == "outcome") & (m["case"] == "toy_scale/n8")].iloc[0]
    assert "SIGSEGV" in json.loads(row["detail"])["error"]


def test_hang_is_timeout_and_later_cases_still_run(run):
    _, stored = run
    assert _status(stored, "hang") == {"n4": "timeout", "n8": "ok", "n16": "ok"}


def test_raise_is_failed_with_the_error(run):
    _, stored = run
    assert set(_status(stored, "raises").values()) == {"failed"}
    m = stored.measurements
    detail = json.loads(m[(m["impl"] == "raises") & (m["metric"] == "outcome")].iloc[0]["detail"])
    assert "planted failure" in detail["error"] and "planted failure" in detail["log_tail"]


def test_unavailable_and_wrong_arch_are_skipped_with_the_reason(run):
    _, stored = run
    assert set(_status(stored, "unavailable").values()) == {"skipped(planted: package missing)"}
    assert all("sm_120" in s and s.startswith("skipped(") for s in _status(stored, "sm120_only").values())


def test_a_wrong_row_is_over_the_ceiling(run):
    r, stored = run
    m = stored.measurements
    worst = m[(m["impl"] == "off_by_one_row") & (m["metric"] == "worst_row_calc_diff")]
    assert (worst["value"] > 1e-3).all()
    assert json.loads(worst.iloc[0]["detail"])["row"] == [1]
    assert "off_by_one_row" in r.stderr and "over a ceiling" in r.stderr


def test_worker_logs_and_page_are_kept(run):
    _, stored = run
    assert (stored.dir / "artifacts" / "workers" / "toy_scale.raises.log").exists()
    page = (stored.dir / "artifacts" / "report.html").read_text()
    assert "crashed" in page and "timeout" in page and "planted failure" in page


def test_ceilings_bound_drift_from_the_oracle_not_between_kernels():
    import math

    import pandas as pd

    from harness.results.ceilings import breaches

    rows = pd.DataFrame([
        {"case": "op/c", "impl": "k", "reference": "fp64", "metric": "calc_diff", "value": 2e-5, "status": "ok"},
        {"case": "op/c", "impl": "k", "reference": "gold", "metric": "calc_diff", "value": 2e-5, "status": "ok"},
        {"case": "op/c", "impl": "k", "reference": "gold", "metric": "rmse_ratio", "value": 9.0, "status": "ok"},
        {"case": "op/c", "impl": "k", "reference": None, "metric": "shared_bytes", "value": 2e5, "status": "ok"},
        {"case": "op/c", "impl": "k", "reference": "fp64", "metric": "calc_diff", "value": math.nan, "status": "ok"},
        {"case": "op/c", "impl": "j", "reference": "fp64", "metric": "calc_diff", "value": 1.0, "status": "failed"},
    ])  # fmt: skip
    over = breaches(rows, {"op": {"calc_diff": 1e-5, "rmse_ratio": 4.0, "shared_bytes": 101376}})
    assert sorted(zip(over["reference"].fillna("-"), over["metric"])) == [
        ("-", "shared_bytes"),
        ("fp64", "calc_diff"),
        ("fp64", "calc_diff"),
        ("gold", "rmse_ratio"),
    ]

"""The faults no drift figure shows, caught by the engine's own checks on every path of every op (tests/ops/
toy_faults.py plants one of each): an output in another dtype than production takes (closer to fp64, not
further), a write past the output's end, outputs that differ between launches; and known findings that keep
running, shown as allowlisted until their date, then failing again."""

from __future__ import annotations

import pytest

from harness.results import judge
from tests.conftest import run_op

PROFILE = 'name = "faults"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.toy_faults]\n'


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    r, run = run_op(tmp_path_factory.mktemp("faults"), PROFILE, "toy_faults")
    m = run.measurements
    m = m[m["case"].str.contains("/")]  # per case (the wall rows are per op)
    values = {(c.split("/")[1], i, k): v for c, i, k, v in zip(m["case"], m["impl"], m["metric"], m["value"])}
    over = judge.breaches(run, run.manifest["limits"])
    return r, run, values, over


def _over(over, impl: str, metric: str) -> bool:
    return bool(((over["impl"] == impl) & (over["metric"] == metric)).any())


def test_the_clean_path_passes_every_check(faults):
    _, _, v, over = faults
    for case in ("n16", "n4_edge"):
        assert v[(case, "good", "contract_violations")] == 0
        assert v[(case, "good", "stray_writes")] == 0
        assert v[(case, "good", "nondeterministic")] == 0
    assert not (over["impl"] == "good").any()


def test_an_output_in_the_wrong_dtype_is_a_contract_violation_though_its_drift_is_smaller(faults):
    _, _, v, over = faults
    assert v[("n16", "wrong_dtype", "contract_violations")] == 1
    assert v[("n16", "wrong_dtype", "calc_diff")] < v[("n16", "good", "calc_diff")]  # what drift alone says
    assert _over(over, "wrong_dtype", "contract_violations")


def test_a_write_past_the_end_is_caught_by_the_guard_band(faults):
    _, _, v, over = faults
    assert v[("n16", "stray_write", "stray_writes")] == 1
    assert v[("n16", "stray_write", "calc_diff")] == v[("n16", "good", "calc_diff")]  # the values are right
    assert _over(over, "stray_write", "stray_writes")


def test_outputs_that_differ_between_launches_are_caught(faults):
    _, _, v, over = faults
    assert v[("n16", "racy", "nondeterministic")] == 1  # the one element, bitwise
    assert _over(over, "racy", "nondeterministic")


def test_a_known_finding_runs_is_shown_and_does_not_fail_until_its_date(faults):
    r, run, v, over = faults
    known = over[(over["impl"] == "known_bad") & (over["metric"] == "calc_diff")]
    assert len(known) == 1 and known["allowed_by"].iloc[0].startswith("allowlisted until 2999-12-31: a planted")
    assert "known finding(s), allowlisted" in r.stderr and "toy#1" in r.stderr
    expired = over[(over["impl"] == "expired_bad") & (over["metric"] == "calc_diff")]
    assert len(expired) == 1 and expired["allowed_by"].isna().all()  # its date has passed: it fails
    assert "EXPIRED on 2020-01-01 (now failing)" in r.stderr
    failing = judge.failing(over)
    assert set(failing["impl"]) == {"wrong_dtype", "stray_write", "racy", "expired_bad"}
    assert r.returncode == 1


def test_the_gate_lets_a_known_finding_pass_until_its_date(tmp_path):
    """A candidate that adds a path with a known finding passes the gate while the entry lasts; one whose entry
    has expired fails it."""
    from harness.results.store import list_runs
    from tests.conftest import OPS, cli, write_profile

    store = tmp_path / "runs"

    def run(impls: list[str]) -> str:
        listed = ", ".join(f'"{i}"' for i in impls)
        prof = write_profile(tmp_path / "p.toml", PROFILE + f"impls = [{listed}]\n")
        cli(["run", "--suite", prof, "--store", store, "--kernels-dir", OPS, "--only", "toy_faults"])
        return list_runs(store)[-1].run_id

    base = run(["good"])
    known = run(["good", "known_bad"])
    expired = run(["good", "expired_bad"])
    common = ["--store", store, "--suite", tmp_path / "p.toml", "--kernels-dir", OPS]
    ok = cli(["gate", "--baseline", base, "--candidate", known, *common])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "allowed until 2999-12-31: a planted finding" in ok.stdout
    bad = cli(["gate", "--baseline", base, "--candidate", expired, *common])
    assert bad.returncode == 1, bad.stdout + bad.stderr


@pytest.mark.parametrize(
    "extra, field",
    [
        ('KNOWN = [Known("nope", "n16", "*", "2999-01-01", "why")]', "KNOWN[0].path"),
        ('KNOWN = [Known("good", "n99", "*", "2999-01-01", "why")]', "KNOWN[0].case"),
        ('KNOWN = [Known("good", "n16", "*", "next spring", "why")]', "KNOWN[0].until"),
        ('KNOWN = [Known("good", "n16", "*", "2999-01-01", " ")]', "KNOWN[0].why"),
        ('OUTPUTS = {"y": "bf16"}', "OUTPUTS must be"),
        ('UNJUDGED = {"calc_diff": ""}', "UNJUDGED must be"),
    ],
)
def test_a_bad_declaration_names_the_file_and_the_field(tmp_path, extra, field):
    """A known finding that names no path or case of the op, or no date, and malformed OUTPUTS or UNJUDGED,
    are catalogue errors naming the op file and the field, not allowances or checks that silently lapse."""
    from harness.parity.catalogue import CatalogueError, load_op_file
    from tests.conftest import OPS

    bad = tmp_path / "toy_faults.py"
    bad.write_text((OPS / "toy_faults.py").read_text() + "\n" + extra + "\n")
    with pytest.raises(CatalogueError) as err:
        load_op_file(bad)
    assert str(bad) in str(err.value) and field in str(err.value), err.value


def test_guard_bands_count_writes_before_after_and_between_rows():
    """op.guarded's sentinels, without the engine: a clean write of the view changes none; one element
    written before the buffer, after it, and into the pad between two rows (a path that assumes dense rows)
    are counted each."""
    import torch

    from harness.parity.op import guarded

    g = guarded((3, 5), torch.bfloat16, "cpu", row_pad=2)
    assert g.view.shape == (3, 5) and g.view.stride() == (7, 1)
    g.view.fill_(1.0)
    assert g.stray() == 0
    base = g.view.storage_offset()
    for offset in (-1, 5, 3 * 7):  # before the first row, the pad after row 0, past the last row
        torch.as_strided(g.view, (1,), (1,), base + offset).fill_(2.0)
    assert g.stray() == 3
    assert int(g.result()["stray_writes"].sum()) == 3

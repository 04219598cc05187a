"""A malformed profile, or an unknown op or implementation, fails with the file and the field named,
and exit code 2."""

import pytest

from harness.parity.catalogue import discover
from harness.profile import ProfileError, load_profile, select
from tests.conftest import OPS, ROOT, cli, write_profile

CASES = [
    ("name = \n", "not valid TOML"),
    ("description = 'x'\n", "name: required"),
    ("name = 'p'\ncolour = 1\n", "top level: unknown field 'colour'"),
    ("name = 'p'\n[kernels]\ntimeout_s = -1\n", "[kernels].timeout_s: must be > 0"),
    ("name = 'p'\n[kernels]\ntimeout_s = 'long'\n", "[kernels].timeout_s: expected a number"),
    ("name = 'p'\n[kernels]\nseed = 1.5\n", "[kernels].seed: expected a non-negative integer"),
    ("name = 'p'\n[kernels]\ncases = 'tiny'\n", "[kernels].cases: expected a list of strings"),
    ("name = 'p'\n[kernels.ops.toy_scale]\nimpl = ['good']\n", "[kernels.ops.toy_scale]: unknown field 'impl'"),
    (
        "name = 'p'\n[kernels.ops.toy_scale]\nceilings = { calc_diff = 'low' }\n",
        "[kernels.ops.toy_scale].ceilings.calc_diff: expected a number",
    ),
    ("name = 'p'\n[kernels.ops.toy_scale]\ntolerance = { atol = 1 }\n", "[kernels.ops.toy_scale].tolerance"),
]


@pytest.mark.parametrize("body,message", CASES)
def test_load_errors_name_file_and_field(tmp_path, body, message):
    f = write_profile(tmp_path / "bad.toml", body)
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert str(f) in str(e.value) and message in str(e.value)


SELECT = [
    ("[kernels.ops.nope]\n", "[kernels.ops.nope]: unknown op 'nope' (known: planted_"),
    (
        "[kernels.ops.toy_scale]\nceilings = { speed = 1 }\n",
        "[kernels.ops.toy_scale].ceilings.speed: not a metric with a limit",
    ),
    ("[kernels.ops.toy_scale]\nimpls = ['gud']\n", "[kernels.ops.toy_scale].impls: unknown implementation 'gud'"),
    ("[kernels.ops.toy_scale]\ngoldens = ['good']\n", "[kernels.ops.toy_scale].goldens: unknown golden 'good'"),
    ("[kernels.ops.toy_scale]\ncases = ['huge']\n", "[kernels.ops.toy_scale].cases: ['huge'] selects no case"),
]


@pytest.mark.parametrize("body,message", SELECT)
def test_unknown_names_are_errors(tmp_path, body, message):
    f = write_profile(tmp_path / "bad.toml", "name = 'p'\n" + body)
    with pytest.raises(ProfileError) as e:
        select(load_profile(f), discover(OPS), has_gpu=False)
    assert str(f) in str(e.value) and message in str(e.value)


def test_selection_resolves_defaults(tmp_path):
    f = write_profile(
        tmp_path / "p.toml",
        "name = 'p'\n[kernels]\ncases = ['n4', 'n1*']\n"
        "[kernels.ops.toy_scale]\nimpls = ['good']\nceilings = { calc_diff = 0.5 }\n",
    )
    (sel,) = select(load_profile(f), discover(OPS), has_gpu=False)
    assert [c.name for c in sel.cases] == ["n4", "n16"]
    assert sel.goldens == ["fp64", "toy.golden"] and sel.impls == ["good"]
    assert sel.ceilings["calc_diff"] == 0.5 and sel.ceilings["worst_row_calc_diff"] == 5e-5


def test_auto_cases_follow_the_machine():
    prof = load_profile(ROOT / "suites" / "smoke.toml")
    ops = discover(ROOT / "kernels")
    cpu, gpu = select(prof, ops, has_gpu=False), select(prof, ops, has_gpu=True)
    assert {s.op.name for s in cpu} == {s.op.name for s in gpu} == set(ops)  # every op, on either machine
    assert all("tiny" in c.tags for s in cpu for c in s.cases)
    assert all("flash" in c.tags for s in gpu for c in s.cases)


def test_cli_exit_code_2_with_the_message(tmp_path):
    f = write_profile(tmp_path / "bad.toml", "name = 'p'\n[kernels.ops.toy_scale]\nimpls = ['gud']\n")
    r = cli(["run", "--suite", str(f), "--store", str(tmp_path / "runs"), "--kernels-dir", str(OPS)])
    assert r.returncode == 2
    assert "impls: unknown implementation 'gud'" in r.stderr and str(f) in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing half-written


def test_cli_missing_profile_and_unknown_only(tmp_path):
    r = cli(["run", "--suite", str(tmp_path / "none.toml")])
    assert r.returncode == 2 and "none.toml: cannot read the profile" in r.stderr
    r = cli(["run", "--only", "no_such_op", "--store", str(tmp_path / "runs")])
    assert r.returncode == 2 and "--only: op 'no_such_op'" in r.stderr


def test_broken_op_file_is_a_usage_error(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "half.py").write_text("OP = 'half'\n")
    r = cli(["run", "--kernels-dir", str(tmp_path / "k"), "--store", str(tmp_path / "runs")])
    assert r.returncode == 2 and "half.py: missing DTYPE" in r.stderr


def test_unwritable_store_is_infrastructure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli(["run", "--store", str(blocker / "runs")])
    assert r.returncode == 3 and "cannot create the run folder" in r.stderr


def test_the_pr_profile_runs_every_op_with_decode_cases_on_a_gpu():
    """An op file added to kernels/ and forgotten in suites/pr.toml would go unchecked by the PR gate; on a
    GPU each op runs more than its tiny cases (its batch-1 and batch-8 decode shapes)."""
    ops = discover(ROOT / "kernels")
    profile = load_profile(ROOT / "suites" / "pr.toml")
    assert set(profile.kernels.ops) == set(ops), set(ops) ^ set(profile.kernels.ops)
    cpu = {s.op.name: len(s.cases) for s in select(profile, ops, has_gpu=False, only=None)}
    gpu = {s.op.name: len(s.cases) for s in select(profile, ops, has_gpu=True, only=None)}
    assert set(cpu) == set(gpu) == set(ops)
    assert all(gpu[op] > cpu[op] for op in ops), {op: (cpu[op], gpu[op]) for op in ops}


def test_every_op_declares_the_outputs_production_takes():
    """The output contract (dtype and shape of each output production reads, checked for every path) needs the
    op file to say what production takes: OUTPUTS, covering the primary output where it is one SGLang returns."""
    ops = discover(ROOT / "kernels")
    missing = sorted(name for name, op in ops.items() if not hasattr(op.module, "OUTPUTS"))
    assert not missing, f"op files without OUTPUTS: {missing}"

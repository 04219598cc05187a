"""SGLang moves things; the harness says so instead of failing. A path whose function the SGLang measured
lacks is `absent(<what> not in SGLang <version>)`, not `failed`; the op file that knows where a function
moved finds it there; SGLang breaking its own import is still a failure; an import that fails inside
another installed package is an environment problem. compare and the gate report a path that became
absent as coverage lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.results.store import load_run
from tests.conftest import OPS, cli, write_profile

PROFILE = 'name = "absence"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.toy_moved]\n'
DOUBLE = "def double(x):\n    return x * 2\n"


def _tree(root: Path, version: str, files: dict[str, str]) -> Path:
    """A stand-in SGLang source tree of `version` with `files` under sglang/."""
    pkg = root / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_version.py").write_text(f"__version__ = version = '{version}'\n")
    for name, text in files.items():
        (pkg / name).write_text(text)
    return root


COMMON = {
    "broken.py": "from sglang.not_a_module import x\n" + DOUBLE,
    "conflict.py": "from packaging.version import Version\n\nVersion('not a version')\n" + DOUBLE,
}
OLD = {**COMMON, "oldplace.py": DOUBLE, "reference.py": DOUBLE}  # before the move
NEW = {**COMMON, "newplace.py": DOUBLE, "oldplace.py": "# moved to newplace\n"}  # after: no reference either


def _run(tmp: Path, src: Path, store: Path):
    prof = write_profile(tmp / "p.toml", PROFILE)
    env = {"SM120_HARNESS_SGLANG_SRC": str(src)}
    r = cli(["run", "--suite", prof, "--store", store, "--kernels-dir", OPS, "--only", "toy_moved"], env=env)
    run = load_run(sorted(p for p in store.iterdir() if (p / "run.json").exists())[-1])
    o = run.measurements[run.measurements["metric"] == "outcome"]
    return r, run, dict(zip(o["impl"], o["status"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("absence")
    store = tmp / "runs"
    old = _run(tmp, _tree(tmp / "old", "9.1.0", OLD), store)
    new = _run(tmp, _tree(tmp / "new", "9.2.0", NEW), store)
    return tmp, store, old, new


def test_a_moved_function_is_found_where_it_moved(runs):
    _, _, (_, _, old), (_, _, new) = runs
    assert old["moved"] == "ok" and new["moved"] == "ok"


def test_a_missing_name_or_module_is_absent_naming_it_and_the_version(runs):
    _, _, (r_old, _, old), (r_new, _, new) = runs
    assert old["by_attribute"] == old["by_module"] == "ok"
    assert new["by_attribute"] == "absent(sglang.oldplace.double not in SGLang 9.2.0)"
    assert new["by_module"] == "absent(sglang.reference not in SGLang 9.2.0)"


def test_sglang_breaking_its_own_import_is_a_failure(runs):
    _, _, (r_old, _, old), _ = runs
    assert old["sglang_breaks"] == "failed"
    assert r_old.returncode == 1  # the failure fails the run; absence and environment do not


def test_an_import_failing_inside_another_package_is_the_environment(runs):
    _, _, (_, _, old), _ = runs
    assert old["conflict"].startswith("skipped(environment: importing SGLang fails in packaging: InvalidVersion")


def test_compare_and_gate_say_coverage_was_lost(runs):
    tmp, store, (_, a, _), (_, b, _) = runs
    prof = write_profile(tmp / "p.toml", PROFILE)
    r = cli(["compare", a.run_id, b.run_id, "--store", store, "--json"])
    assert r.returncode in (0, 1), r.stderr
    rows = {(x["impl"], x["metric"]): x for x in json.loads(r.stdout)}
    assert rows[("by_module", "outcome")]["verdict"] == "absent"
    assert "coverage lost: absent(sglang.reference" in rows[("by_module", "outcome")]["reason"]
    assert rows[("by_module", "calc_diff")]["verdict"] == "absent"  # its figures go with it, not "missing"
    g = cli(
        [
            "gate",
            "--baseline",
            a.run_id,
            "--candidate",
            b.run_id,
            "--store",
            store,
            "--suite",
            prof,
            "--kernels-dir",
            OPS,
        ]
    )
    assert g.returncode == 1, g.stdout + g.stderr
    assert "coverage lost: absent(sglang.oldplace.double not in SGLang 9.2.0)" in g.stdout
    assert "missing from the candidate" not in g.stdout

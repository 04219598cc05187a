"""How a measurement is judged: one vocabulary of metrics, too few repeats and the fallback rule, derived
rates with their timing's verdict, a run's limits stored once and read by every reader, failures the
baseline already had, and a path's environment problem told from a real error."""

import ast
import json
import random
import sys

import pandas as pd
import pytest

from harness.profile import ProfileError, load_profile
from harness.results import metrics as M
from harness.results.compare import compare
from harness.results.gate import GateConfig, gate, markdown
from harness.results.store import RunWriter, load_run, row
from harness.workers.environment import drop_orphans, missing_module
from tests.conftest import ROOT, cli, write_profile

NO_BREACH = pd.DataFrame(columns=["case", "impl", "reference", "metric", "value", "ceiling"])


def _tok_s(run: str, median: float, spread: float = 0.003) -> dict:
    s = [median * (1 - spread), median, median * (1 + spread)]  # three repeats, as the profiles ship
    return row(run, "perf", "perf/in128_out256/c8", "v1", "server", M.OUTPUT_TOK_S, median, better="higher", samples=s)


def test_three_repeats_cannot_reach_significance_so_the_fallback_rule_judges():
    assert M.least_p(M.MANN_WHITNEY, 3, 3) > M.ALPHA  # the throughput gate could never fail on the test alone
    a = pd.DataFrame([_tok_s("A", 1000.0)])
    (r,) = compare(a, pd.DataFrame([_tok_s("B", 900.0)])).to_dict("records")
    assert r["verdict"] == "regressed" and "fallback rule" in r["reason"] and M.FALLBACK_RULE in r["reason"]
    (f,) = gate(a, pd.DataFrame([_tok_s("B", 900.0)]), NO_BREACH, GateConfig())
    assert f.metric == M.OUTPUT_TOK_S and f.failing
    (r,) = compare(a, pd.DataFrame([_tok_s("B", 990.0)])).to_dict("records")
    assert r["verdict"] == "same"
    # past the threshold but the repeats overlap: not confirmed, said with asv's "~"
    (r,) = compare(a, pd.DataFrame([_tok_s("B", 960.0, spread=0.05)])).to_dict("records")
    assert r["verdict"] == "same" and r["reason"].startswith("~")


@pytest.mark.parametrize(
    "section,field",
    [
        ("[perf]\nrepeats = 1\nconcurrency = [1]\n", "[perf].repeats"),
        ("[kernels]\ntiming = { repeats = 1 }\n", "[kernels.timing].repeats"),
    ],
)
def test_a_profile_whose_repeats_can_never_show_a_change_is_an_error(tmp_path, section, field):
    prof = write_profile(tmp_path / "p.toml", 'name = "p"\n' + section)
    with pytest.raises(ProfileError) as e:
        load_profile(prof)
    assert f"{prof}: {field}: 1 repeat(s) can never show a change" in str(e.value)
    assert f"needs {M.fewest_samples(M.MANN_WHITNEY)} a side" in str(e.value)


def _timed(run: str, us: float, seed: int, noise: float = 0.01) -> list[dict]:
    rng = random.Random(seed)
    s = [us * (1 + rng.gauss(0, noise)) for _ in range(50)]
    med = sorted(s)[25]
    key = (run, "kernels", "hash_topk/b1_s0", "v1", "sglang.triton")
    return [
        row(*key, M.TIME_US, med, unit="us", samples=s),
        row(*key, M.GBPS, 1e3 / med, unit="GB/s", better="higher"),
        row(*key, M.ROOFLINE_FRAC, 0.1 * 20 / med, better="higher"),
        row(*key, M.TIME_RATIO, med / 10.0, reference="flashinfer.fa2", unit="x"),
    ]


def test_a_rate_derived_from_a_timing_takes_its_verdict():
    a = pd.DataFrame(_timed("A", 20.0, 1, noise=0.05))
    # 3% slower with 5% noise: the timing is within the noise, so its GB/s cannot have improved
    c = compare(a, pd.DataFrame(_timed("B", 20.6, 2, noise=0.05))).set_index("metric")
    assert c.loc[M.TIME_US, "verdict"] == "same"
    for m in (M.GBPS, M.ROOFLINE_FRAC, M.TIME_RATIO):
        assert c.loc[m, "verdict"] == "same" and c.loc[m, "reason"].startswith(f"as {M.TIME_US}:")
    c = compare(a, pd.DataFrame(_timed("B", 24.0, 2, noise=0.05))).set_index("metric")
    assert set(c["verdict"]) == {"regressed"}  # 20% slower: one verdict, on every figure of it
    assert c.loc[M.GBPS, "p_value"] == c.loc[M.TIME_US, "p_value"] < M.ALPHA


def _outcome(run: str, status: str, impl: str = "sglang.torch") -> dict:
    return row(run, "kernels", "hash_topk/b1_s0", "v1", impl, M.OUTCOME, 0.002, status=status)


def test_the_gate_passes_failures_the_baseline_already_had_and_fails_new_ones():
    a = pd.DataFrame([_outcome("A", "failed"), _outcome("A", "ok", "sglang.triton")])
    b = pd.DataFrame([_outcome("B", "failed"), _outcome("B", "failed", "sglang.triton")])
    found = gate(a, b, NO_BREACH, GateConfig())
    old, new = sorted(found, key=lambda f: f.impl)
    assert (old.impl, old.preexisting, old.failing) == ("sglang.torch", True, False)
    assert (new.impl, new.preexisting, new.failing) == ("sglang.triton", False, True)
    md = markdown(found, "B against A")
    assert "1 failing, 1 failing before this change, 0 allowed" in md
    assert "| failing before this change | hash_topk/b1_s0 | sglang.torch |" in md
    # A against A: nothing this change introduced
    assert not any(f.failing for f in gate(a, a, NO_BREACH, GateConfig()))
    assert all(f.failing for f in gate(a, a, NO_BREACH, GateConfig(fail_on_preexisting=True)))


def test_fail_on_preexisting_is_read_from_the_profile(tmp_path):
    prof = write_profile(tmp_path / "p.toml", 'name = "p"\n[gate]\nfail_on_preexisting = true\n')
    assert load_profile(prof).gate.fail_on_preexisting is True
    prof.write_text('name = "p"\n[gate]\nfail_on_preexisting = "yes"\n')
    with pytest.raises(ProfileError, match=r"\[gate\].fail_on_preexisting: expected true or false"):
        load_profile(prof)


JUDGED_OP = """
import os
import torch
from harness.parity.op import ORACLE, Case, Path

OP = "judged"
DTYPE = "bf16"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)
CEILINGS = {"max_abs": 1e-4}  # tighter than anything the bf16 defaults bound


def cases():
    return [Case("n16", {"n": 16}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], 8, generator=gen)}


def off(t, case):
    y = t["x"] * 2
    y[3, 1] += float(os.environ.get("JUDGED_ERROR", "0"))  # calc_diff stays far under bf16's 1e-5
    return {"y": y}


def needs_absent_package(t, case):
    import sm120_harness_absent_package  # noqa: F401  (stands for sgl_kernel on a host without it)


def imports_a_module_its_package_lacks(t, case):
    import harness.no_such_module  # noqa: F401


def raises(t, case):
    raise ValueError("planted: shapes do not match")


PATHS = [
    Path(ORACLE, lambda t, c: {"y": t["x"].double() * 2}, golden=True),
    Path("off", off),
    Path("absent", needs_absent_package),
    Path("broken_import", imports_a_module_its_package_lacks),
    Path("raises", raises),
]
"""


def test_limits_environment_skips_and_failures_before_through_the_cli(tmp_path):
    """A run over its op's own ceiling fails on its page, in the site and in the gate; a path whose
    package is missing is skipped naming it, real errors fail, and the gate passes those the baseline
    had too (A against A exits 0)."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "judged.py").write_text(JUDGED_OP)
    prof = write_profile(tmp_path / "p.toml", 'name = "judged"\n[kernels]\ncases = ["tiny"]\n')
    store = tmp_path / "runs"
    args = ["run", "--suite", str(prof), "--store", str(store), "--kernels-dir", str(kernels)]
    only_off = write_profile(tmp_path / "b.toml", prof.read_text() + '[kernels.ops.judged]\nimpls = ["off"]\n')
    base = cli([*args[:2], str(only_off), *args[3:]], env={"JUDGED_ERROR": "0"})
    cand = cli(args, env={"JUDGED_ERROR": "1e-3"})
    assert base.returncode == 0, base.stderr[-2000:]
    assert cand.returncode == 1 and "1 measurement(s) over a ceiling, 2 path x case failed" in cand.stderr
    b, run = (load_run(store / r.stdout.split()[-1]) for r in (base, cand))

    out = run.measurements[run.measurements["metric"] == M.OUTCOME].set_index("impl")
    assert out.loc["absent", "status"].startswith("skipped(sm120_harness_absent_package not installed: ")
    assert out.loc["broken_import", "status"] == "failed"
    assert "harness.no_such_module" in json.loads(out.loc["broken_import", "detail"])["error"]
    assert out.loc["raises", "status"] == "failed"
    raised = json.loads(out.loc["raises", "detail"])
    assert raised["error"] == "ValueError: planted: shapes do not match" and "judged.py:" in raised["raised_at"]

    assert run.manifest["limits"]["judged"][M.MAX_ABS] == 1e-4  # judged with the op's own, and stored
    page = (run.dir / "artifacts" / "report.html").read_text()
    assert "Over a ceiling (1)" in page and "1.00e-04" in page
    # the site is built without the op file: it reads the limits the run stored
    site = cli(["report", "--store", str(store), "--out", str(tmp_path / "site"), "--kernels-dir", str(tmp_path)])
    assert site.returncode == 0, site.stderr[-2000:]
    index = (tmp_path / "site" / "index.html").read_text()
    assert '<td class="bad">1</td>' in index  # the candidate's "over ceiling" column
    assert "Over a ceiling (1)" in (tmp_path / "site" / "runs" / f"{run.run_id}.html").read_text()

    g = cli(["gate", "--baseline", b.run_id, "--candidate", run.run_id, "--store", str(store)])
    assert g.returncode == 1, g.stdout
    assert "| fail | judged/n16 | off | fp64 | max_abs | 0.001 over its ceiling 0.0001 |" in g.stdout
    # the same failures in the baseline: failing before this change (a run against itself is refused)
    again = load_run(store / cli(args, env={"JUDGED_ERROR": "1e-3"}).stdout.split()[-1])
    g = cli(["gate", "--baseline", run.run_id, "--candidate", again.run_id, "--store", str(store)])
    assert g.returncode == 0 and "0 failing, 3 failing before this change" in g.stdout, g.stdout
    assert "| failing before this change | judged/n16 | raises |  | outcome | failed, as in the baseline |" in g.stdout


def test_no_metric_name_is_spelled_outside_the_vocabulary():
    # "kernels" is also the suite's and the catalogue folder's name
    names = set(M.METRICS) - {M.KERNELS}
    found = []
    for f in sorted((ROOT / "harness").rglob("*.py")):  # the engine's sub-packages too
        if f == ROOT / "harness" / "results" / "metrics.py":
            continue
        tree = ast.parse(f.read_text())
        # a module's __all__ names its Python objects (harness/parity/op.py exports the function calc_diff)
        exports = {
            id(c)
            for a in ast.walk(tree)
            if isinstance(a, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in a.targets)
            for c in ast.walk(a.value)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names and id(n) not in exports:
                found.append(f"{f.relative_to(ROOT)}:{n.lineno}: {n.value!r}")
    for f in sorted((ROOT / "reports").glob("*.j2")):  # the templates name them through `M` too
        text = f.read_text()
        found += [f"{f.name}: {q}{n}{q}" for n in names | {M.KERNELS} for q in "'\"" if f"{q}{n}{q}" in text]
    assert not found, found


def test_compare_does_not_import_the_worker():
    import subprocess

    code = "import sys, harness.results.compare, harness.results.gate; print('harness.workers.worker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------ environment problems


def test_a_module_missing_from_an_import_chain_is_named():
    try:
        import sm120_harness_absent_package  # noqa: F401
    except ModuleNotFoundError as exc:
        assert missing_module(exc).startswith("sm120_harness_absent_package not installed: ModuleNotFoundError")
    # raised while handling the missing import (Python's import machinery losing a half-imported package)
    try:
        try:
            import sm120_harness_absent_package  # noqa: F401
        except ImportError:
            raise KeyError("sglang")  # noqa: B904
    except KeyError as exc:
        assert missing_module(exc).startswith("sm120_harness_absent_package not installed: KeyError: 'sglang'")
    # a module missing from a package that is installed is the package's bug, not the host's
    try:
        import harness.no_such_module  # noqa: F401
    except ModuleNotFoundError as exc:
        assert missing_module(exc) is None
    assert missing_module(ValueError("bad shape")) is None


def test_a_failed_import_leaves_no_half_imported_package(tmp_path, monkeypatch):
    pkg = tmp_path / "sm120_half" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg.parent / "__init__.py").write_text("import sm120_half.sub\nimport sm120_harness_absent_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    with pytest.raises(ModuleNotFoundError):
        __import__("sm120_half")
    assert "sm120_half.sub" in sys.modules and "sm120_half" not in sys.modules  # what Python leaves
    drop_orphans(before)
    assert "sm120_half.sub" not in sys.modules


def test_the_site_judges_a_run_stored_before_its_limits_with_the_op_files(tmp_path):
    from harness.limits import of_run
    from harness.results.judge import breaches

    w = RunWriter.create(tmp_path / "store", {})  # a manifest with no limits: a run from before they were stored
    w.add(
        [row(w.run_id, "kernels", "hash_topk/tiny_t1_s0", "v", "sglang.torch", "ids_mismatch", 3.0, reference="fp64")]
    )
    w.finish("complete")
    ops = tmp_path / "kernels"
    ops.mkdir()
    (ops / "hash_topk.py").symlink_to(ROOT / "kernels" / "hash_topk.py")
    run = load_run(w.dir)
    assert "limits" not in run.manifest
    over = breaches(run, of_run(run, kernels_dir=ops))
    assert list(over["metric"]) == ["ids_mismatch"]  # hash_topk's own CEILINGS, read from its op file

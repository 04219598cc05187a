"""Attribution: two runs that each hold serving and kernel rows, GSM8K and tok/s down between them;
the kernel paths that moved are listed, worst first, and what did not move (or is a golden) is not.
Runs without kernel rows name the runs of the store that have them."""

import json
import random

import pandas as pd

from harness.results.attribution import attribute, markdown
from harness.results.store import RunWriter, row
from tests.conftest import cli

QUESTIONS = 1319


def _answers(right: int, seed: int) -> list[float]:
    got = [1.0] * right + [0.0] * (QUESTIONS - right)
    random.Random(seed).shuffle(got)
    return got


def _timed(run, case, impl, us, seed, n=50):
    rng = random.Random(seed)
    s = [us * (1 + rng.gauss(0, 0.005)) for _ in range(n)]
    return row(run, "kernels", case, "v1", impl, "time_us", sorted(s)[n // 2], unit="us", samples=s)


def _outcome(run, case, impl, status="ok", golden=False):
    detail = {"golden": golden, **({"error": "RuntimeError: illegal memory access"} if status != "ok" else {})}
    return row(run, "kernels", case, "v1", impl, "outcome", 1.0, unit="s", status=status, detail=detail)


def _drift(run, case, impl, metric, value):
    return row(run, "kernels", case, "v1", impl, metric, value, reference="fp64")


def _tok_s(run, tok_s, seed):
    rng = random.Random(seed)
    s = [tok_s * (1 + rng.gauss(0, 0.003)) for _ in range(5)]
    return row(run, "perf", "perf/in128_out256/c8", "v1", "server", "output_tok_s", sorted(s)[2], samples=s,
               better="higher", unit="tok/s")  # fmt: skip


def _rows(run: str, candidate: bool) -> list[dict]:
    """A nightly's rows: GSM8K over 1319 questions, one throughput point, and three ops' kernel rows.
    The candidate answers 28 fewer questions right (40 flipped to wrong, 12 to right), is 6% slower
    at c8, its fp4 dequant path drifts 4.2 times as much, its sinkhorn Triton path 2.5 times, its
    kv_dequant Triton path is 10% slower and its MLA torch path crashes; the golden DeepGEMM's
    time moves too (not SGLang's code) and the mHC torch path does not move at all."""
    base = _answers(1253, 0)
    answers = list(base)
    if candidate:
        right = [i for i, v in enumerate(base) if v == 1.0][:40]
        wrong = [i for i, v in enumerate(base) if v == 0.0][:12]
        for i in right:
            answers[i] = 0.0
        for i in wrong:
            answers[i] = 1.0
    k = 4.2 if candidate else 1.0
    fp4, sink, kv, mla = "mxfp4_moe/tiny_e8", "mhc_sinkhorn/tiny_t16_typical", "kv_dequant/tiny", "mla_sparse_decode/b1"
    return [
        row(
            run,
            "accuracy",
            "gsm8k/lm_eval",
            "v1",
            "server",
            "gsm8k_acc",
            sum(answers) / QUESTIONS,
            better="higher",
            samples=answers,
        ),  # fmt: skip
        _tok_s(run, 1900.0 if candidate else 2020.0, 1 if candidate else 2),
        _outcome(run, fp4, "sglang.fp4_dequant_triton"),
        _drift(run, fp4, "sglang.fp4_dequant_triton", "calc_diff", 1e-3 * k),
        _drift(run, fp4, "sglang.fp4_dequant_triton", "worst_row_calc_diff", 3e-3 * (2.1 if candidate else 1.0)),
        _outcome(run, fp4, "deepgemm.fp8_fp4", golden=True),
        _timed(run, fp4, "deepgemm.fp8_fp4", 50.0 * (1.3 if candidate else 1.0), 3),
        _outcome(run, sink, "sglang.triton"),
        _drift(run, sink, "sglang.triton", "calc_diff", 2e-9 * (2.5 if candidate else 1.0)),
        _outcome(run, sink, "sglang.torch"),
        _drift(run, sink, "sglang.torch", "calc_diff", 2e-15),
        _outcome(run, kv, "sglang.triton"),
        _timed(run, kv, "sglang.triton", 110.0 if candidate else 100.0, 4 if candidate else 5),
        _outcome(run, mla, "sglang.torch", status="crashed" if candidate else "ok"),
    ]


def test_kernels_that_moved_are_ranked_worst_first():
    a = attribute(pd.DataFrame(_rows("A", False)), pd.DataFrame(_rows("B", True)))
    drops = {d.metric: d for d in a.drops}
    assert set(drops) == {"gsm8k_acc", "output_tok_s"}
    assert drops["gsm8k_acc"].text().startswith("GSM8K -2.1 points (gsm8k/lm_eval")
    assert [f"{m.op}/{m.impl}" for m in a.moved] == [
        "mla_sparse_decode/sglang.torch",  # a new crash first
        "mxfp4_moe/sglang.fp4_dequant_triton",
        "mhc_sinkhorn/sglang.triton",
        "kv_dequant/sglang.triton",
    ]
    fp4 = a.moved[1]
    assert (fp4.metric, fp4.rows) == ("calc_diff", 2) and abs(fp4.factor - 4.2) < 1e-9
    assert abs(a.moved[3].factor - 1.1) < 0.01 and a.moved[3].metric == "time_us"
    assert a.kernel_rows == (True, True)


def test_no_drop_no_section_and_no_move_is_said():
    same = pd.DataFrame(_rows("A", False))
    assert markdown(attribute(same, same), ({}, {}), []) == ""
    drop_only = [r for r in _rows("B", True) if r["suite"] != "kernels"] + [
        r for r in _rows("B", False) if r["suite"] == "kernels"
    ]
    text = markdown(attribute(same, pd.DataFrame(drop_only)), ({}, {}), [])
    assert "GSM8K -2.1 points" in text and "no kernel row moved past its threshold" in text


def _store_run(store, rows_of, commit, suites):
    w = RunWriter.create(store, {"fingerprint": {"sglang_commit": commit}, "suites": suites, "profile": {"name": "p"}})
    w.add(rows_of(w.run_id))
    w.finish("complete")
    return w.run_id


def test_compare_and_gate_print_the_attribution(tmp_path):
    store = tmp_path / "runs"
    a = _store_run(store, lambda i: _rows(i, False), "a" * 40, ["kernels", "accuracy", "perf"])
    b = _store_run(store, lambda i: _rows(i, True), "b" * 40, ["kernels", "accuracy", "perf"])
    r = cli(["compare", a, b, "--store", str(store), "--html", str(tmp_path / "c.html")])
    assert r.returncode == 0, r.stderr
    head = next(line for line in r.stdout.splitlines() if "kernels that moved" in line)
    assert head.startswith("GSM8K -2.1 points")
    assert "mla_sparse_decode/sglang.torch failed, mxfp4_moe/sglang.fp4_dequant_triton calc_diff x4.2" in head
    assert "| mxfp4_moe/sglang.fp4_dequant_triton | mxfp4_moe/tiny_e8 (fp64) | calc_diff |" in r.stdout
    assert "deepgemm" not in r.stdout.split("#### Attribution")[1]
    assert "kernels that moved: mla_sparse_decode/sglang.torch failed" in (tmp_path / "c.html").read_text()
    r = cli(["gate", "--baseline", a, "--candidate", b, "--store", str(store)])
    assert r.returncode == 1 and "kernels that moved: mla_sparse_decode/sglang.torch failed" in r.stdout


def test_runs_without_kernel_rows_name_the_runs_that_have_them(tmp_path):
    store = tmp_path / "runs"
    serving = lambda i, c: [r for r in _rows(i, c) if r["suite"] != "kernels"]  # noqa: E731
    a = _store_run(store, lambda i: serving(i, False), "a" * 40, ["accuracy", "perf"])
    b = _store_run(store, lambda i: serving(i, True), "b" * 40, ["accuracy", "perf"])
    kernels_b = _store_run(
        store, lambda i: [r for r in _rows(i, True) if r["suite"] == "kernels"], "b" * 40, ["kernels"]
    )
    r = cli(["compare", a, b, "--store", str(store), "--md", str(tmp_path / "c.md")])
    text = (tmp_path / "c.md").read_text()
    assert r.returncode == 0 and "No kernel rows to attribute it to" in text
    assert f"the baseline {a} (SGLang aaaaaaaaaaaa) holds none; no run of the store does" in text
    assert f"the candidate {b} (SGLang bbbbbbbbbbbb) holds none; runs of the store that do: {kernels_b}" in text
    assert json.loads(cli(["compare", a, b, "--store", str(store), "--json"]).stdout)  # JSON unchanged: rows

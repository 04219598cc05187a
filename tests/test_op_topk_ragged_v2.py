"""The V4.1 prefill top-k (kernels/topk_ragged_v2.py): the oracle against a second selection by hand, the causal
lengths, and through the real CLI engine SGLang's torch selection within the op's ceilings while an unmasked tail
and a one-short selection are flagged (the JIT topk_transform_ragged_v2 is GPU only: skipped here)."""

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_topk_ragged_v2"


@pytest.fixture(scope="module")
def op():
    return load_op_file(ROOT / "kernels" / "topk_ragged_v2.py").module


def _case(op, name):
    case = next(c for c in op.cases() if c.name == name)
    return case, op.make_inputs(case, torch.Generator().manual_seed(5))


def test_lengths_are_causal(op):
    case, t = _case(op, "tiny_r48_c2_k1024_bf16ties")
    start, ratio = case.params["start"], case.params["ratio"]
    assert t["lens"].tolist() == [(start + i + 1) // ratio for i in range(48)]
    assert t["logits"].shape[1] % 4 == 0 and t["logits"].shape[1] >= int(t["lens"].max())


@pytest.mark.parametrize("name", ["tiny_r64_c1_k512", "tiny_r40_c1_k1152_coarse"])
def test_oracle_is_the_best_k_by_a_selection_loop(op, name):
    """A second formulation: repeatedly take the highest remaining score of the row's window (lowest column on
    ties); rows of at most k positions hold 0..n-1 then -1."""
    case, t = _case(op, name)
    got = op.oracle(t, case)["indices"]
    k = case.params["k"]
    for b in (0, len(t["lens"]) // 2, len(t["lens"]) - 1):
        n = int(t["lens"][b])
        row = got[b].tolist()
        if n <= k:
            assert row == list(range(n)) + [-1] * (k - n)
            continue
        vals = t["logits"][b, :n].double().tolist()
        left = dict(enumerate(vals))
        want = []
        for _ in range(k):
            best = max(left, key=lambda c: (left[c], -c))
            want.append(best)
            del left[best]
        assert row == want


def test_metrics_flag_a_tail_column(op):
    case, t = _case(op, "tiny_r64_c1_k512")
    good = op.oracle(t, case)
    bad = good["indices"].clone()
    bad[-1, 0] = int(t["lens"][-1])  # one column past the row's length
    m = {x.name: x.value for x in op.metrics({"indices": bad}, good, t, case)}
    assert m["out_of_range_indices"] == 1.0 and m["tie_recall"] < 1.0
    clean = {x.name: x.value for x in op.metrics(good, good, t, case)}
    assert clean["tie_recall"] == 1.0 and clean["short_row_errors"] == 0.0


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    outcome = m[m["metric"] == "outcome"]
    status = dict(zip(outcome["impl"], outcome["status"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, flagged, status, values


def test_sglang_torch_selection_is_clean(measured, op):
    _, flagged, status, values = measured
    assert status["sglang.torch"] == "ok"
    for case in (c.name for c in op.cases() if "tiny" in c.tags):
        assert ("sglang.torch", case) not in flagged, case
        assert values[("sglang.torch", case, "tie_recall")] == 1.0


def test_planted_faults_are_caught(measured, op):
    r, flagged, _, values = measured
    for case in (c.name for c in op.cases() if "tiny" in c.tags):
        assert ("planted.k_minus_one", case) in flagged, case
        assert values[("planted.k_minus_one", case, "tie_recall")] < 1.0
    # the tail only matters where a row sees more than k positions (in the k1024 case every row sees <= 1024 and
    # a top-k of all its columns is the same set, masked or not)
    for case in ("tiny_r64_c1_k512", "tiny_r40_c1_k1152_coarse"):
        assert ("planted.unmasked_tail", case) in flagged, case
    assert ("planted.unmasked_tail", "tiny_r48_c2_k1024_bf16ties") not in flagged
    assert values[("planted.unmasked_tail", "tiny_r64_c1_k512", "short_row_errors")] > 0  # rows of <= k lose columns
    assert r.returncode == 1

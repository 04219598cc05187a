"""Router top-k (kernels/moe_fused_gate.py): the fp64 oracle against a second formulation and SGLang's
torch reference; through the real CLI engine, SGLang's Triton kernel within the fp32 ceilings with every
id right (padding, fused shared slot, exact ties by the lowest id), and one-line edits of a copy of its
source flagged (tests/ops/planted_moe_fused_gate.py)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.parity.catalogue import load_module
from tests.conftest import ROOT, needs_sglang, run_planted

OP_FILE = ROOT / "kernels" / "moe_fused_gate.py"
PROFILE = """
name = "planted"
[kernels]
cases = ["tiny", "ties"]
[kernels.ops.planted_moe_fused_gate]
"""
PAD, TIES = "planted_moe_fused_gate/tiny_t8_s1_pad5", "planted_moe_fused_gate/tiny_t8_s0_ties"


def _op():
    return load_module(Path(OP_FILE))


def _second_formulation(t, case):
    """Row by row in Python floats: F.softplus in fp64, sorted by (-b, id), the shared slot appended."""
    p = case.params
    s = F.softplus(t["logits"].double()).sqrt() if p["scoring"] == "sqrtsoftplus" else t["logits"].double().sigmoid()
    b = s + t["bias"].double()
    live = int(t["n_live"][0]) if "n_live" in t else s.shape[0]
    w_rows, id_rows = [], []
    for r in range(s.shape[0]):
        K, S = p["K"], p["S"]
        if r >= live:
            w_rows.append([0.0] * (K + S))
            id_rows.append([-1] * (K + S))
            continue
        ids = sorted(range(s.shape[1]), key=lambda e: (-float(b[r, e]), e))[:K]
        total = math.fsum(float(s[r, e]) for e in ids)
        scale = p["rsf"] if p["apply"] else 1.0
        pairs = sorted((e, float(s[r, e]) / total * scale) for e in ids)
        shared = 1.0 if p["apply"] else 1.0 / p["rsf"]
        id_rows.append([e for e, _ in pairs] + [p["N"] + j for j in range(S)])
        w_rows.append([w for _, w in pairs] + [shared] * S)
    return torch.tensor(w_rows, dtype=torch.float64), torch.tensor(id_rows, dtype=torch.int32)


@pytest.mark.parametrize("name", ["tiny_t16_s0_tails", "tiny_t8_s1_pad5", "tiny_t8_s0_ties", "tiny_top22_m4"])
def test_oracle_agrees_with_a_second_formulation(name):
    op = _op()
    case = next(c for c in op.cases() if c.name == name)
    t = op.make_inputs(case, torch.Generator().manual_seed(1))
    got = op.oracle(t, case)
    w, ids = _second_formulation(t, case)
    assert torch.equal(got["topk_ids"], ids)
    keep = op.valid_region(t, case)["topk_weights"]
    # rtol 1e-9: torch's fp64 softplus and log1p differ by ~4e-11 on the deep rows (logits near -25)
    assert torch.allclose(got["topk_weights"][keep], w[keep], rtol=1e-9, atol=1e-15)


def test_oracle_agrees_with_sglang_torch_reference_off_ties():
    """SGLang's biased_topk_impl (eager), on random rows kept clear of near ties: same ids, weights to fp32."""
    needs_sglang()
    op = _op()
    case = op._case("random", T=64, S=1)
    t = op.make_inputs(case, torch.Generator().manual_seed(2))
    want, got = op.oracle(t, case), op.sglang_torch(t, case)
    assert torch.equal(got["topk_ids"], want["topk_ids"])
    assert (got["topk_weights"].double() - want["topk_weights"]).abs().max() < 1e-6


def test_inputs_keep_rows_clear_of_near_ties():
    op = _op()
    case = next(c for c in op.cases() if c.name == "tiny_t16_s0_tails")
    t = op.make_inputs(case, torch.Generator().manual_seed(0))
    assert float(op._gap(t["logits"], t["bias"], case.params).min()) >= op.MIN_GAP


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    r, run, over = run_planted(tmp_path_factory.mktemp("planted_moe_fused_gate"), PROFILE, "planted_moe_fused_gate")
    m = run.measurements
    flagged = set(zip(over["impl"], over["case"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c, k): (v, d) for i, c, k, v, d in zip(m["impl"], m["case"], m["metric"], m["value"], m["detail"])}
    return r, flagged, values


def test_clean_kernel_is_within_the_fp32_ceilings_ids_exact(measured):
    _, flagged, values = measured
    for case in (PAD, TIES):
        assert values[("sglang.triton", case, "ids_mismatch")][0] == 0, case
        assert values[("sglang.triton", case, "calc_diff")][0] < 1e-12, case
        assert values[("sglang.triton", case, "worst_row_calc_diff")][0] < 1e-12, case
        assert ("sglang.triton", case) not in flagged
    # the padded rows and the fused shared slot: the torch reference with select_experts' masking agrees
    assert values[("sglang.torch", PAD, "ids_mismatch")][0] == 0
    assert ("sglang.torch", PAD) not in flagged


def test_torch_reference_breaks_exact_ties_otherwise(measured):
    """A finding, not a fault of the check: torch.topk(sorted=False) keeps a tied expert that the
    kernels' lowest-id rule drops; the weights it gives are the tied experts' (equal) weights."""
    _, flagged, values = measured
    v, detail = values[("sglang.torch", TIES, "ids_mismatch")]
    assert v > 0 and '"shared": 0' in detail
    assert ("sglang.torch", TIES) in flagged


def test_dropped_sqrt_is_caught_by_the_weights(measured):
    _, flagged, values = measured
    assert values[("planted.sqrt_dropped", PAD, "calc_diff")][0] > 1e-6
    assert ("planted.sqrt_dropped", PAD) in flagged


def test_padding_off_by_one_is_caught_by_the_ids(measured):
    _, flagged, values = measured
    v, detail = values[("planted.padding_off_by_one", PAD, "ids_mismatch")]
    assert v == 7 and '"rows": 1' in detail  # row 5 routed: its 6 routed ids and its shared id
    assert ("planted.padding_off_by_one", PAD) in flagged
    assert ("planted.padding_off_by_one", TIES) not in flagged  # no padding there: same as clean


def test_swapped_shared_weight_is_caught(measured):
    r, flagged, values = measured
    assert values[("planted.shared_weight_swapped", PAD, "max_abs")][0] == pytest.approx(1 - 1 / 1.5, rel=1e-6)
    assert values[("planted.shared_weight_swapped", PAD, "ids_mismatch")][0] == 0
    assert ("planted.shared_weight_swapped", PAD) in flagged
    assert r.returncode == 1

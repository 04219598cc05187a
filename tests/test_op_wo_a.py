"""wo_a (kernels/wo_a.py): the oracle's block-FP8 dequantization against SGLang's own load hook and a
second decoding of the scales, and through the real CLI engine SGLang's einsum and bmm paths within the
bf16 ceilings while a one-line edit of `_dequant_fp8` and a wrong head slice are flagged."""

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import OPS, ROOT, needs_sglang, run_planted

OP = "planted_wo_a"


@pytest.fixture(scope="module")
def wo_a():
    return load_op_file(ROOT / "kernels" / "wo_a.py").module


@pytest.fixture(scope="module")
def planted():
    return load_op_file(OPS / "planted_wo_a.py").module


def _inputs(wo_a, name):
    case = next(c for c in wo_a.cases() if c.name == name)
    return case, wo_a.make_inputs(case, torch.Generator().manual_seed(3))


def test_oracle_dequant_is_sglangs_load_hook_bit_for_bit(wo_a, planted):
    """e4m3 times a power of two is exact in bf16, so SGLang's `_dequant_fp8` (its unmodified source) and
    the oracle's float64 decoding must agree exactly; and the e8m0 bytes decode as torch decodes them."""
    needs_sglang()
    case, t = _inputs(wo_a, "tiny_t5_tp4")
    ours = wo_a.dequant_f64(t["wo_a_fp8"], t["wo_a_scale"])
    theirs = planted.dequant_fp8()(t["wo_a_fp8"], t["wo_a_scale"])
    assert theirs.dtype == torch.bfloat16
    assert torch.equal(theirs.double(), ours)
    by_torch = t["wo_a_scale"].float().double().repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert torch.equal(t["wo_a_fp8"].double() * by_torch, ours)
    assert float(ours[:128, -128:].abs().max()) == 0.0  # the all-zero block


def test_oracle_is_a_grouped_matmul(wo_a):
    """A second formulation: one matmul per group, on the heads FlashMLA's padded output puts first."""
    case, t = _inputs(wo_a, "tiny_t3_tp8_padded")
    y = wo_a.oracle(t, case)["y"]
    w = wo_a.dequant_f64(t["wo_a_fp8"], t["wo_a_scale"])
    o = t["o_attn"].double()[:, :8, :].reshape(3, -1)  # G = 1: heads 0..7, 4096 values a token
    assert t["o_attn"][:, 8:].isnan().all()  # the padding no path may read
    assert torch.allclose(y[:, 0, :], o @ w.T, rtol=1e-12, atol=1e-12)
    assert y.shape == (3, 1, 1024) and float(y[1].abs().max()) == 0.0  # the zero row


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values


@pytest.mark.parametrize("impl", ["sglang.einsum", "sglang.bmm"])
def test_clean_paths_are_within_the_bf16_ceilings(measured, impl):
    _, flagged, values = measured
    for case in ("tiny_t3_tp8_padded", "tiny_t5_tp4"):
        assert 1e-7 < values[(impl, case, "calc_diff")] < 1e-5, (impl, case)  # one bf16 rounding, not zero
        assert values[(impl, case, "nonfinite_mismatch")] == 0
        assert (impl, case) not in flagged


def test_interleaved_scale_rows_are_flagged(measured):
    _, flagged, values = measured
    for case in ("tiny_t3_tp8_padded", "tiny_t5_tp4"):
        assert values[("planted.scale_rows_interleaved", case, "calc_diff")] > 1e-2
        assert ("planted.scale_rows_interleaved", case) in flagged


def test_reading_the_padded_heads_is_flagged(measured):
    """Only where the heads are padded: at TP4 prefill the last 16 of 16 heads are the right ones."""
    r, flagged, values = measured
    assert values[("planted.padded_heads_read", "tiny_t3_tp8_padded", "nonfinite_mismatch")] > 0
    assert ("planted.padded_heads_read", "tiny_t3_tp8_padded") in flagged
    assert ("planted.padded_heads_read", "tiny_t5_tp4") not in flagged
    assert r.returncode == 1

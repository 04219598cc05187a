"""The KV-cache writers, checked through their readers (kernels/k_norm_rope_flashmla.py): the oracle against
an independent computation, the CPU paths through the real CLI engine within their ceilings, and writers
that are self-consistent but not what SGLang's reader reads flagged.

The production writer `fused_k_norm_rope_flashmla` is JIT CUDA only (skipped here, audited); the faults are
planted in a copy of SGLang's CPU-runnable reference writer (test/kernels/deepseek_v4/k_cache_reference.py)."""

import pytest
import torch

from harness.parity.catalogue import load_module
from tests.conftest import ROOT, needs_sglang, run_planted

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_kv_writers]
"""
FAULTS = ("scale_row_stride_7", "exponent_floor", "rope_offset_off_by_one")


@pytest.fixture(scope="module")
def op():
    return load_module(ROOT / "kernels" / "k_norm_rope_flashmla.py")


def test_oracle_agrees_with_a_second_formulation(op):
    """RMSNorm + RoPE written another way: the rotation as a real 2x2 matrix on (even, odd) dims, the norm
    through torch.nn.functional.rms_norm, in float64."""
    gen = torch.Generator().manual_seed(1)
    case = next(c for c in op.cases() if c.name == "tiny_t40_neg1_adversarial")
    t = op.make_inputs(case, gen)
    want = op.oracle(t, case)["k"]
    x = t["qkv_a"][:, 1024:].double()
    y = torch.nn.functional.rms_norm(x, (512,), t["kv_weight"].double(), eps=op.EPS)
    ang = torch.angle(t["freqs_cis"][t["positions"]].to(torch.complex128))  # [T, 32]
    c, s = torch.cos(ang), torch.sin(ang)
    re, im = y[:, 448::2], y[:, 449::2]
    y[:, 448::2], y[:, 449::2] = re * c - im * s, re * s + im * c
    assert torch.allclose(want, y, rtol=1e-6, atol=1e-9)  # the table is complex64: |e^{i theta}| within 1e-7
    assert torch.equal(want[1], torch.zeros(512, dtype=torch.float64))  # the all-zero row stays zero


def test_oracle_encoding_matches_the_test_reference_where_both_are_defined(op):
    """The oracle's UE8M0 exponents equal SGLang's reference quantizer's (computed here in torch from its
    formula, ceil(log2(amax / 448))) wherever amax is above both floors."""
    y = torch.randn(64, 512, dtype=torch.float64) * torch.pow(2.0, torch.randint(-6, 6, (64, 1)).double())
    e = op.scale_exponents(y)
    amax = y[:, :448].reshape(64, 7, 64).abs().amax(-1).float()
    ref = torch.ceil(torch.log2(amax / 448.0)).double()
    assert torch.equal(e, ref)
    nope8, scale_bytes, rope = op.encode(y)
    back = nope8.double().reshape(64, 7, 64) * torch.pow(2.0, scale_bytes.double() - 127)[..., None]
    assert (back.reshape(64, 448).abs() <= 448 * torch.pow(2.0, e).repeat_interleave(64, 1)).all()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_kv_writers")
    r, run, over = run_planted(tmp, PROFILE, "planted_kv_writers")
    m = run.measurements
    over = set(over["impl"])
    outcome = m[m["metric"] == "outcome"]
    status = dict(zip(outcome["impl"], outcome["status"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, k): v for i, k, v in zip(m["impl"], m["metric"], m["value"])}
    return r, over, status, values


def test_clean_paths_are_within_their_ceilings(measured):
    _, over, status, values = measured
    for impl in ("sglang.reference", "oracle.bytes"):
        assert status[impl] == "ok", impl
        assert values[(impl, "calc_diff")] < 1e-3, impl
        assert values[(impl, "nope_err_ulps")] <= 0.5 + 2.0**-4 + 2.0**-6, impl
        assert values[(impl, "rope_err_ulps")] <= 1.25, impl
        assert values[(impl, "stray_bytes")] == 0, impl
        assert values[(impl, "readers_disagree")] == 0, impl  # SGLang's two readers decode the bytes alike
        assert impl not in over, impl
    # the oracle's own bytes, read by SGLang's reader, are round to nearest exactly: the layout is SGLang's
    assert values[("oracle.bytes", "nope_err_ulps")] <= 0.5
    assert values[("oracle.bytes", "rope_err_ulps")] <= 0.5
    assert values[("oracle.bytes", "scale_mismatch")] == 0


@pytest.mark.parametrize("fault", FAULTS)
def test_self_consistent_writer_is_caught_by_the_reader(measured, fault):
    r, over, _, values = measured
    impl = f"planted.{fault}"
    assert impl in over, fault
    assert values[(impl, "nope_err_ulps")] > 1.0 or values[(impl, "rope_err_ulps")] > 1.25, fault
    assert r.returncode == 1


def test_readers_that_decode_the_bytes_otherwise_are_caught(measured):
    _, over, _, values = measured
    assert values[("planted.readers_apart", "readers_disagree")] == 1
    assert values[("planted.readers_apart", "nope_err_ulps")] <= 0.5  # the first reader is right
    assert "planted.readers_apart" in over

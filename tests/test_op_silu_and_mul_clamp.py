"""The shared expert's clamped SwiGLU (kernels/silu_and_mul_clamp.py). SGLang's SM120 implementation is
JIT CUDA only (skipped on the CPU, built and launched by the audit); the CPU-runnable implementations are
SGLang's torch reference and its ROCm Triton kernel, so the planted faults are one-line edits of a copy of
the Triton kernel's source. The oracle is checked against a second formulation and hand-made values."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_silu_and_mul_clamp"


@pytest.fixture(scope="module")
def act():
    return load_op_file(ROOT / "kernels" / "silu_and_mul_clamp.py").module


def test_oracle_agrees_with_torch_silu(act):
    """F.silu on the clamped halves, in float64, on the adversarial inputs."""
    case = next(c for c in act.cases() if c.name == "tiny_t16_tp8")
    t = act.make_inputs(case, torch.Generator().manual_seed(2))
    x = t["gate_up"].double()
    g, u = x.chunk(2, dim=-1)
    want = torch.nn.functional.silu(g.clamp(max=10.0)) * u.clamp(-10.0, 10.0)
    got = act.oracle(t, case)["y"]
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-300)
    assert (x.abs() > 10).float().mean() > 0.03  # the case holds values beyond the limit


def test_oracle_by_hand(act):
    """The gate is clamped only from above, up from both sides; a gate of -3e38 gives -0, not NaN."""
    g = torch.tensor([20.0, -20.0, 1.0, -3.0e38, 3.0e38, 2.0])
    u = torch.tensor([1.0, 1.0, -50.0, 5.0, 2.0, 10.0])
    y = act.clamped_swiglu_f64(torch.cat([g, u]).to(torch.bfloat16)[None], 10.0)[0]
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    want = [silu(10.0), silu(-20.0), -10 * silu(1.0), 0.0, 2 * silu(10.0), 10 * silu(2.0)]
    assert y.tolist() == pytest.approx(want, rel=1e-12, abs=1e-300)
    assert math.copysign(1.0, float(y[3])) == -1.0


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    outcome = m[m["metric"] == "outcome"]
    status = {(i, c.split("/")[1]): s for i, c, s in zip(outcome["impl"], outcome["case"], outcome["status"])}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values, status


CASES = ("tiny_t16_tp8", "tiny_t5_tp4_plain")


@pytest.mark.parametrize("impl", ["sglang.torch", "sglang.triton_rocm"])
def test_clean_paths_are_within_the_ceilings(measured, impl):
    _, flagged, values, _ = measured
    for case in CASES:
        assert 1e-7 < values[(impl, case, "calc_diff")] < 2e-5, (impl, case)
        assert values[(impl, case, "nonfinite_mismatch")] == 0
        assert (impl, case) not in flagged


def test_cuda_path_is_skipped_on_the_cpu(measured):
    _, _, _, status = measured
    assert status[("sglang.cuda", CASES[0])].startswith("skipped(needs a CUDA GPU")


@pytest.mark.parametrize("planted", ["planted.up_lower_clamp_dropped", "planted.up_offset_dropped"])
def test_planted_edits_are_flagged(measured, planted):
    r, flagged, values, _ = measured
    for case in CASES:
        assert values[(planted, case, "calc_diff")] > 1e-3, case
        assert (planted, case) in flagged
    assert r.returncode == 1

"""RMSNorm (kernels/rmsnorm.py): the oracle against torch's own RMSNorm in float64 and hand-checked
rows; the CPU reference compiled from SGLang's source is SGLang's method; through the CLI engine,
forward_native within the bf16 ceilings and one-line faults in copies of its source flagged.

RMSNorm.forward_cuda's kernels (sgl_kernel's AOT CUDA builds) have no CPU path: the planted faults
are in the reference (tests/ops/planted_rmsnorm.py), which shows the checks themselves can fail."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted


@pytest.fixture(scope="module")
def op():
    return load_op_file(ROOT / "kernels" / "rmsnorm.py").module


def _tiny(op):
    return [c for c in op.cases() if "tiny" in c.tags]


def test_oracle_is_torch_rms_norm_in_float64(op):
    for case in _tiny(op) + [c for c in op.cases() if c.name == "b8_q_norm"]:
        t = op.make_inputs(case, torch.Generator().manual_seed(3))
        H = case.params["H"]
        s = t["x_buf"][:, :H].double() + (t["residual"].double() if "residual" in t else 0)
        want = torch.nn.functional.rms_norm(s, (H,), t["weight"].double(), op.EPS)
        got = op.oracle(t, case)
        assert torch.allclose(got["y"], want, rtol=1e-12, atol=1e-12), case.name
        if case.params["residual"]:
            assert torch.equal(got["residual"], s)


def test_edge_rows_are_where_eps_decides(op):
    case = next(c for c in op.cases() if c.name == "tiny_hidden_t6")
    t = op.make_inputs(case, torch.Generator().manual_seed(0))
    x = t["x_buf"].double()
    ms = x.square().mean(-1)
    assert ms[-1] == 0 and ms[-2].item() == pytest.approx(op.EPS, rel=0.01)
    assert ms[-3].item() == pytest.approx(1e-10, rel=0.01) and ms[-4].sqrt().item() == pytest.approx(3e4, rel=0.01)
    assert x[-5].abs().max().item() == pytest.approx(1e4, rel=2**-8)  # 1e4 in bf16
    y = op.oracle(t, case)["y"]
    assert (y[-1] == 0).all()
    w = t["weight"].double()
    assert torch.allclose(y[-2], x[-2] / math.sqrt(ms[-2].item() + op.EPS) * w, rtol=1e-12)
    # mean(x^2) == eps: the scale is 1/sqrt(2 eps), not the 1/sqrt(eps) a dropped mean would give
    assert float((y[-2] / (x[-2] * w)).mean()) == pytest.approx(1 / math.sqrt(2 * op.EPS), rel=0.01)


def test_q_norm_input_is_the_strided_view_of_qkv_a(op):
    case = next(c for c in op.cases() if c.name == "tiny_q_norm_t6")
    t = op.make_inputs(case, torch.Generator().manual_seed(0))
    x = op._x(t, case)
    assert t["x_buf"].shape == (6, 1536) and x.shape == (6, 1024) and x.stride() == (1536, 1)
    assert x.dtype == t["weight"].dtype == torch.bfloat16


def test_compiled_reference_is_sglangs_forward_native(op):
    """The path compiles RMSNorm.forward_native from layernorm.py; it computes what the imported method
    does, bit for bit, with and without a residual."""
    needs_sglang()
    from harness.parity.op import import_module

    fn = op.forward_native()
    assert fn.__code__.co_filename.endswith("srt/layers/layernorm.py")
    norm = import_module("sglang.srt.layers.layernorm").RMSNorm(64, eps=op.EPS)
    norm.weight.data = (1 + 0.1 * torch.randn(64)).bfloat16()
    x, r = torch.randn(3, 64).bfloat16(), torch.randn(3, 64).bfloat16()
    stand_in = op.norm_module(norm.weight.data)
    assert torch.equal(fn(stand_in, x), norm.forward_native(x))
    for a, b in zip(fn(stand_in, x, r), norm.forward_native(x, r)):
        assert torch.equal(a, b)


def test_wrong_eps_hides_outside_the_edge_rows(op):
    """Why the edge rows: eps 1e-5 for 1e-6 is within bf16's ceilings on ordinary rows."""
    needs_sglang()
    from harness.parity.op import calc_diff

    case = next(c for c in op.cases() if c.name == "b8_hidden")
    t = op.make_inputs(case, torch.Generator().manual_seed(0))
    edit = ("torch.rsqrt(variance + self.variance_epsilon)", "torch.rsqrt(variance + 1e-5)")
    got, want = op.run_native(t, case, edit)["y"], op.oracle(t, case)["y"]
    assert calc_diff(got[:-5], want[:-5]) < 1e-5
    assert calc_diff(got[-5:], want[-5:]) > 1e-3


CLEAN = ["sglang.native"]
FAULTS = ["wrong_eps", "weight_dropped", "residual_not_updated"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    needs_sglang()
    op = "planted_rmsnorm"
    r, run, over = run_planted(
        tmp_path_factory.mktemp(op), f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{op}]\n', op
    )
    m = run.measurements
    flagged = {impl: sorted(set(g["metric"])) for impl, g in over.groupby("impl")}
    outcome = m[m["metric"] == "outcome"]
    status = {impl: set(g["status"]) for impl, g in outcome.groupby("impl")}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values, status


def test_clean_reference_is_within_the_bf16_ceilings(planted):
    _, flagged, values, status = planted
    assert status["sglang.native"] == {"ok"}
    assert "sglang.native" not in flagged
    for case in ("tiny_q_norm_t6", "tiny_hidden_t6", "tiny_residual_t6"):
        # one bf16 rounding of y: ~1e-6, far from 0 and from the 1e-5 ceiling
        assert 1e-8 < values[("sglang.native", case, "calc_diff")] < 3e-6
        assert values[("sglang.native", case, "worst_row_calc_diff")] < 5e-6
    assert values[("sglang.native", "tiny_residual_t6", "residual.calc_diff")] < 1e-6


def test_cuda_path_is_skipped_with_its_reason(planted):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path runs")
    assert planted[3]["sglang.cuda"] == {"skipped(needs a CUDA GPU)"}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_flagged(planted, fault):
    r, flagged, _, _ = planted
    assert f"planted.{fault}" in flagged, f"{fault} passed every ceiling"
    assert r.returncode == 1


def test_faults_are_flagged_by_the_metric_that_should(planted):
    _, flagged, values, _ = planted
    assert flagged["planted.residual_not_updated"] == ["residual.calc_diff", "residual.worst_row_calc_diff"]
    assert values[("planted.residual_not_updated", "tiny_residual_t6", "calc_diff")] < 3e-6  # y is right
    assert "worst_row_calc_diff" in flagged["planted.wrong_eps"]

"""The mHC ops (kernels/mhc_*.py): each oracle against hand-checked facts, and SGLang's kernels with
planted faults (tests/ops/planted_mhc_*.py) run through the real CLI engine on the CPU: every fault is
flagged by the metrics and ceilings, the clean paths are not."""

import math
from pathlib import Path

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

KERNELS = ROOT / "kernels"


def planted_run(tmp: Path, op: str, cases: list[str]):
    """Run tests/ops/<op>.py on `cases`; (completed process, {impl: flagged metrics}, {(impl, case, metric): value})."""
    needs_sglang()
    listed = ", ".join(f'"{c}"' for c in cases)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = [{listed}]\n[kernels.ops.{op}]\n', op)
    m = run.measurements
    flagged = {impl: sorted(set(g["metric"])) for impl, g in over.groupby("impl")}
    outcome = m[m["metric"] == "outcome"]
    status = {impl: set(g["status"]) for impl, g in outcome.groupby("impl")}
    ran = {impl: s for impl, s in status.items() if not all(x.startswith("skipped(needs a CUDA GPU") for x in s)}
    failed = {impl: s for impl, s in ran.items() if s != {"ok"}}
    assert not failed, f"paths that did not run: {failed}\n{r.stdout[-3000:]}"
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values, status


# ---------------------------------------------------------------------------------------------- sinkhorn


@pytest.fixture(scope="module")
def sinkhorn():
    return load_op_file(KERNELS / "mhc_sinkhorn.py").module


def test_sinkhorn_oracle_is_the_definition(sinkhorn):
    """Hand-made logits: sigmoid(base) (+eps for pre) from a zero row, and from uniform comb logits the
    uniform doubly-stochastic matrix, less what the eps in each division takes."""
    mixes = torch.zeros(1, 1, 24)
    base = torch.zeros(24)
    base[0], base[5] = 2.0, -1.0
    pre, post, comb = sinkhorn.split_sinkhorn_f64(mixes, torch.ones(3), base)
    assert pre[0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(-2.0)) + 1e-6, abs=1e-15)
    assert post[0, 0, 1].item() == pytest.approx(2 / (1 + math.exp(1.0)), abs=1e-15)
    assert torch.allclose(comb, torch.full_like(comb, 0.25), atol=1e-5)
    assert float(comb.sum(-2).max()) < 1.0  # the last step divides each column by (sum + eps)


def test_sinkhorn_oracle_converges_to_the_sinkhorn_knopp_limit(sinkhorn):
    """With eps 0 and many iterations the comb is the doubly stochastic scaling of exp(logits) that a
    plain alternating normalisation also reaches."""
    gen = torch.Generator().manual_seed(1)
    mixes = torch.randn(6, 1, 24, generator=gen, dtype=torch.float64)
    _, _, comb = sinkhorn.split_sinkhorn_f64(mixes, torch.ones(3), torch.zeros(24), iters=500, eps=0.0)
    a = torch.exp(mixes[:, 0, 8:].view(6, 4, 4))
    for _ in range(500):
        a = a / a.sum(-1, keepdim=True)
        a = a / a.sum(-2, keepdim=True)
    assert torch.allclose(comb[:, 0], a, atol=1e-12)
    assert torch.allclose(comb.sum(-1), torch.ones(6, 1, 4, dtype=torch.float64), atol=1e-9)


def test_sinkhorn_inputs_are_in_the_production_layout(sinkhorn):
    for case in sinkhorn.cases():
        if "tiny" not in case.tags:
            continue
        t = sinkhorn.make_inputs(case, torch.Generator().manual_seed(0))
        T = case.params["T"]
        assert t["mixes"].shape == (T, 1, 24) and t["mixes"].dtype == torch.float32
        assert t["hc_scale"].shape == (3,) and t["hc_base"].shape == (24,)
        if case.params["outliers"]:  # the stress row's largest comb logit is past exp's fp32 range
            logits = t["mixes"][:, 0, 8:] * t["hc_scale"][2] + t["hc_base"][8:]
            assert float(logits.max()) >= 119.0


SINKHORN_CLEAN = ["sglang.triton", "sglang.torch", "planted.clean_fp32"]
SINKHORN_FAULTS = [
    "iteration_missing",
    "eps_dropped",
    "sinkhorn_eps_dropped",
    "pre_eps_dropped",
    "row_col_swapped",
    "no_max_shift",
    "post_mult_dropped",
    "comb_transposed",
]


@pytest.fixture(scope="module")
def sinkhorn_planted(tmp_path_factory):
    return planted_run(
        tmp_path_factory.mktemp("planted_mhc_sinkhorn"), "planted_mhc_sinkhorn", ["tiny_t16_typical", "tiny_t16_sharp"]
    )


@pytest.mark.parametrize("impl", SINKHORN_CLEAN)
def test_sinkhorn_clean_paths_pass(sinkhorn_planted, impl):
    r, flagged, values, _ = sinkhorn_planted
    assert impl not in flagged, f"{impl} flagged: {flagged.get(impl)}"
    for case in ("tiny_t16_typical", "tiny_t16_sharp"):
        assert values[(impl, case, "calc_diff")] < 1e-12
        assert values[(impl, case, "worst_row_calc_diff")] < 1e-11


@pytest.mark.parametrize("fault", SINKHORN_FAULTS)
def test_sinkhorn_fault_is_flagged(sinkhorn_planted, fault):
    r, flagged, _, _ = sinkhorn_planted
    assert f"planted.{fault}" in flagged, f"{fault} passed every ceiling"
    assert r.returncode == 1


def test_sinkhorn_faults_are_flagged_by_the_metric_that_should(sinkhorn_planted):
    _, flagged, values, _ = sinkhorn_planted
    assert flagged["planted.pre_eps_dropped"] == ["pre.bias"]  # invisible to every calc_diff
    assert "post.calc_diff" in flagged["planted.post_mult_dropped"]
    assert "nonfinite_mismatch" in flagged["planted.no_max_shift"]
    # one iteration short changes the answer where 20 iterations have not converged: the sharp regime
    short = values[("planted.iteration_missing", "tiny_t16_sharp", "worst_row_calc_diff")]
    assert short > 1e3 * values[("sglang.triton", "tiny_t16_sharp", "worst_row_calc_diff")]


def test_sinkhorn_tilelang_is_skipped_with_its_reason(sinkhorn_planted):
    assert sinkhorn_planted[3]["sglang.tilelang"] == {"skipped(needs a CUDA GPU)"}


# ---------------------------------------------------------------------------------------------- prenorm


@pytest.fixture(scope="module")
def pre_norm():
    return load_op_file(KERNELS / "mhc_pre_norm.py").module


def test_pre_norm_oracle_is_the_definition(pre_norm):
    """One token whose streams are constant c: rsqrt(c^2 + eps) * c * (sum of hc_fn's row)."""
    x = torch.full((1, 4, 4096), 0.5, dtype=torch.bfloat16)
    fn = torch.zeros(24, 16384)
    fn[3, :] = 2.0**-10
    fn[7, 100] = 2.0
    mixes = pre_norm.pre_norm_f64(x, fn, 1e-6)
    scale = 1 / math.sqrt(0.25 + 1e-6)
    assert mixes[0, 3].item() == pytest.approx(0.5 * 16384 * 2.0**-10 * scale, rel=1e-12)
    assert mixes[0, 7].item() == pytest.approx(0.5 * 2.0 * scale, rel=1e-12)
    assert mixes[0, 0].item() == 0.0


def test_pre_norm_edge_rows(pre_norm):
    case = pre_norm.cases()[0]
    assert case.name == "tiny_t4_edge"
    t = pre_norm.make_inputs(case, torch.Generator().manual_seed(0))
    assert t["x"].shape == (4, 4, 4096) and t["x"].dtype == torch.bfloat16
    assert t["hc_fn"].shape == (24, 16384) and t["hc_fn"].dtype == torch.float32
    ms = t["x"].flatten(1).double().square().mean(-1)
    assert ms[-1] == 0.0 and ms[-2].item() == pytest.approx(1e-6, rel=0.02)
    out = pre_norm.oracle(t, case)["mixes"]
    assert out.isfinite().all() and (out[-1] == 0).all()


def test_pre_norm_runs_sglangs_own_function(pre_norm):
    """The path compiles SGLang's source of hc_pre_torch_impl: its code object names deepseek_v4.py."""
    needs_sglang()
    impl = pre_norm.hc_pre_torch_impl(1e-6)
    assert impl.__code__.co_filename.endswith("deepseek_v4.py")
    x = torch.randn(2, 4, 4096).bfloat16()
    x_flat, mixes = impl(x, torch.randn(24, 16384) * 0.01)
    assert x_flat.dtype == torch.float32 and mixes.shape == (2, 1, 24)


PRE_NORM_CLEAN = ["sglang.torch", "planted.clean_fp32", "planted.clean_tf32"]
PRE_NORM_FAULTS = ["eps_not_passed", "rsqrt_of_sum", "streams_interleaved", "bf16_gemm"]


@pytest.fixture(scope="module")
def pre_norm_planted(tmp_path_factory):
    return planted_run(
        tmp_path_factory.mktemp("planted_mhc_pre_norm"), "planted_mhc_pre_norm", ["tiny_t4_edge", "tiny_t3_plain"]
    )


@pytest.mark.parametrize("impl", PRE_NORM_CLEAN)
def test_pre_norm_clean_paths_pass(pre_norm_planted, impl):
    _, flagged, values, _ = pre_norm_planted
    assert impl not in flagged, f"{impl} flagged: {flagged.get(impl)}"


def test_pre_norm_fp32_is_far_inside_the_tf32_ceiling(pre_norm_planted):
    _, _, values, _ = pre_norm_planted
    assert values[("sglang.torch", "tiny_t4_edge", "calc_diff")] < 1e-11
    assert values[("planted.clean_tf32", "tiny_t4_edge", "calc_diff")] > 1e-9  # TF32 rounding is visible


@pytest.mark.parametrize("fault", PRE_NORM_FAULTS)
def test_pre_norm_fault_is_flagged(pre_norm_planted, fault):
    r, flagged, _, _ = pre_norm_planted
    assert f"planted.{fault}" in flagged, f"{fault} passed every ceiling"
    assert r.returncode == 1


def test_pre_norm_dropped_eps_shows_on_the_edge_rows(pre_norm_planted):
    """Where mean(x^2) >> eps nothing changes; the zero row turns NaN and the RMS-1e-3 row moves."""
    _, flagged, values, _ = pre_norm_planted
    assert values[("planted.eps_not_passed", "tiny_t3_plain", "calc_diff")] < 1e-11
    assert values[("planted.eps_not_passed", "tiny_t4_edge", "nonfinite_mismatch")] > 0


def test_pre_norm_gpu_paths_are_skipped_with_their_reason(pre_norm_planted):
    status = pre_norm_planted[3]
    assert status["sglang.tilelang"] == {"skipped(needs a CUDA GPU)"}
    assert all(s.startswith("skipped(needs a CUDA GPU") for s in status["deepgemm.tf32"])


# ---------------------------------------------------------------------------------------------- combine


@pytest.fixture(scope="module")
def combine():
    return load_op_file(KERNELS / "mhc_combine.py").module


def test_combine_oracle_is_the_definition(combine):
    x = torch.zeros(1, 4 * 8)
    for k in range(4):
        x[0, k * 8 : (k + 1) * 8] = k + 1  # stream k holds k + 1
    pre = torch.tensor([[0.5, 0.25, 0.125, 1.0]])
    y = combine.oracle({"x_flat": x, "pre": pre}, combine.cases()[0])["y"]
    assert torch.equal(y, torch.full((1, 8), 0.5 + 0.5 + 0.375 + 4.0, dtype=torch.float64))


COMBINE_FAULTS = ["pre_stride_zero", "stream_dropped", "hidden_major_flatten", "fp32_output"]


@pytest.fixture(scope="module")
def combine_planted(tmp_path_factory):
    return planted_run(
        tmp_path_factory.mktemp("planted_mhc_combine"), "planted_mhc_combine", ["tiny_t3_fp32", "tiny_t2_h1000_tail"]
    )


def test_combine_clean_kernel_passes(combine_planted):
    _, flagged, values, _ = combine_planted
    assert "sglang.triton" not in flagged
    assert values[("sglang.triton", "tiny_t3_fp32", "calc_diff")] < 1e-5


@pytest.mark.parametrize("fault", COMBINE_FAULTS)
def test_combine_fault_is_flagged(combine_planted, fault):
    r, flagged, _, _ = combine_planted
    assert f"planted.{fault}" in flagged, f"{fault} passed every ceiling"
    assert r.returncode == 1


def test_combine_output_in_fp32_is_caught_by_the_contract_not_by_drift(combine_planted):
    _, flagged, values, _ = combine_planted
    assert flagged["planted.fp32_output"] == ["contract_violations"]
    for case in ("tiny_t3_fp32", "tiny_t2_h1000_tail"):  # closer to fp64 than the bf16 kernel
        assert values[("planted.fp32_output", case, "calc_diff")] < values[("sglang.triton", case, "calc_diff")]


# ---------------------------------------------------------------------------------------------- fused boundary


@pytest.fixture(scope="module")
def fused():
    return load_op_file(KERNELS / "mhc_fused_post_pre.py").module


def test_fused_oracle_is_the_composition_of_the_step_oracles(fused, sinkhorn, pre_norm):
    """One token by hand: the post, then the step oracles, then the RMSNorm."""
    case = fused.cases()[0]
    t = fused.make_inputs(case, torch.Generator().manual_seed(3))
    out = fused.oracle(t, case)
    r = t["residual"][0].double()
    post, comb = t["post"][0, :, 0].double(), t["comb"][0].double()
    r_new = torch.stack([post[j] * t["x"][0].double() + sum(comb[k, j] * r[k] for k in range(4)) for j in range(4)])
    assert torch.allclose(out["residual"][0], r_new, rtol=1e-12, atol=1e-12)
    mixes = pre_norm.pre_norm_f64(r_new[None], t["hc_fn"], 1e-6)
    pre, p, c = sinkhorn.split_sinkhorn_f64(mixes, t["hc_scale"], t["hc_base"])
    y = (pre[0, :, None] * r_new).sum(0)
    y = y / torch.sqrt(y.square().mean() + 1e-6) * t["norm_weight"].double()
    assert torch.allclose(out["layer_input"][0], y, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out["post"][0], p[0], rtol=1e-12) and torch.allclose(out["comb"][0], c[0], rtol=1e-12)


FUSED_FAULTS = [
    "prev_comb_transposed",
    "sublayer_output_dropped",
    "combine_of_old_residual",
    "split_k_partial_lost",
    "post_mult_dropped",
    "norm_weight_dropped",
]


@pytest.fixture(scope="module")
def fused_planted(tmp_path_factory):
    return planted_run(
        tmp_path_factory.mktemp("planted_mhc_fused"), "planted_mhc_fused_post_pre", ["tiny_t3_typical", "tiny_t2_sharp"]
    )


@pytest.mark.parametrize("impl", ["sglang.torch", "planted.clean"])
def test_fused_clean_paths_pass(fused_planted, impl):
    _, flagged, values, _ = fused_planted
    assert impl not in flagged, f"{impl} flagged: {flagged.get(impl)}"
    assert values[(impl, "tiny_t3_typical", "residual.calc_diff")] < 2e-6  # one bf16 rounding


@pytest.mark.parametrize("fault", FUSED_FAULTS)
def test_fused_fault_is_flagged(fused_planted, fault):
    r, flagged, _, _ = fused_planted
    assert f"planted.{fault}" in flagged, f"{fault} passed every ceiling"
    assert r.returncode == 1


def test_fused_gpu_paths_are_skipped_with_their_reason(fused_planted):
    status = fused_planted[3]
    for impl in ("sglang.tilelang", "sglang.tilelang_deepgemm"):
        assert status[impl] == {"skipped(needs a CUDA GPU)"}

"""kernels/fp8_block_gemm.py: its inputs are what the DTYPE claims (exactly quantizable, production
layout), its oracle and tile metric are right, and SGLang's real Triton GEMM under the interpreter,
run through the CLI, passes clean and is flagged for each planted fault (tests/ops/planted_fp8_block_gemm.py)."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import breaches, default_ceilings
from tests.conftest import ROOT, needs_sglang, run_op

op = load_op_file(ROOT / "kernels" / "fp8_block_gemm.py")
mod = op.module
TINY = [c for c in mod.cases() if "tiny" in c.tags]
FLASH = [c for c in mod.cases() if "flash" in c.tags]
CEIL = {**default_ceilings(mod.DTYPE), **mod.CEILINGS}


def _inputs(case):
    return mod.make_inputs(case, torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_inputs_are_the_production_layout(case):
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    kb, nb = math.ceil(K / 128), math.ceil(N / 128)
    t = _inputs(case)
    assert (t["x"].dtype, tuple(t["x"].shape)) == (torch.bfloat16, (M, K))
    assert (t["a"].dtype, tuple(t["a"].shape)) == (torch.float8_e4m3fn, (M, K))
    assert (t["weight"].dtype, tuple(t["weight"].shape)) == (torch.float8_e4m3fn, (N, K))
    assert (t["a_scale"].dtype, tuple(t["a_scale"].shape)) == (torch.float32, (M, kb))
    assert (t["weight_scale_inv"].dtype, tuple(t["weight_scale_inv"].shape)) == (torch.float32, (nb, kb))
    assert all(v.is_contiguous() for v in t.values())
    for s in (t["a_scale"], t["weight_scale_inv"]):  # UE8M0: powers of two
        assert (torch.frexp(s).mantissa == 0.5).all()


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_activations_quantize_exactly(case):
    """Every (token, group) and every weight block reaches 448 exactly, so amax/448 gives back the stored
    scale and x / scale gives back `a`: a quantizer in the path loses nothing, as the DTYPE assumes."""
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    t = _inputs(case)
    a, w = t["a"].float(), t["weight"].float()
    for g in range(math.ceil(K / 128)):
        cols = slice(128 * g, 128 * (g + 1))
        assert torch.equal(a[:, cols].abs().amax(1), torch.full((M,), 448.0))
        group = t["x"][:, cols].float()
        scale = group.abs().amax(1, keepdim=True) / 448.0
        assert torch.equal(scale[:, 0], t["a_scale"][:, g])
        assert torch.equal((group / scale).to(torch.float8_e4m3fn).float(), a[:, cols])
        for n in range(math.ceil(N / 128)):
            assert float(w[128 * n : 128 * (n + 1), cols].abs().amax()) == 448.0


def test_token_scales_span_an_outlier_range():
    """One token far above the rest (massive activations): what makes a per-tensor scale detectable."""
    t = _inputs(next(c for c in TINY if c.params["M"] >= 3))
    per_token = t["a_scale"].log2().amax(1)
    assert float(per_token.max() - per_token.min()) >= 8


# ---------------------------------------------------------------------------------------------- oracle, metric


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_oracle_is_the_sum_of_scaled_block_products(case):
    """Against a computation written the other way round: per K-group products of the raw e4m3 values,
    each scaled by its token's and its weight block's scale, then summed."""
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    t = _inputs(case)
    a, w = t["a"].double(), t["weight"].double()
    want = torch.zeros(M, N, dtype=torch.float64)
    for g in range(math.ceil(K / 128)):
        cols = slice(128 * g, 128 * (g + 1))
        partial = a[:, cols] @ w[:, cols].T
        col_scale = t["weight_scale_inv"][:, g].double().repeat_interleave(128)[:N]
        want += partial * t["a_scale"][:, g : g + 1].double() * col_scale[None, :]
    got = mod.oracle(t, case)["out"]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_tile_metric_finds_one_corrupted_tile():
    case = next(c for c in TINY if c.name == "tiny_m5_k384_n200")
    t = _inputs(case)
    ref = mod.oracle(t, case)["out"]
    clean = ref.to(torch.bfloat16)
    (m,) = mod.metrics({"out": clean}, {"out": ref}, t, case)
    assert m.name == "worst_tile_calc_diff" and 0 < m.value < 5e-6
    bad = clean.clone()
    bad[3, 130:140] *= 1.05  # ten outputs of token 3 in the second (partial) column block
    (m,) = mod.metrics({"out": bad}, {"out": ref}, t, case)
    assert m.value > CEIL["worst_tile_calc_diff"] and m.detail == {"row": 3, "n_block": 1}
    bad[0, 5] = float("nan")
    (m,) = mod.metrics({"out": bad}, {"out": ref}, t, case)
    assert m.value == math.inf and m.detail == {"row": 0, "n_block": 0}


# ---------------------------------------------------------------------------------------------- cases


def test_flash_cases_are_the_deepseek_v4_flash_projections():
    shapes = {(c.params["K"], c.params["N"]) for c in FLASH}
    assert shapes == set(mod.SHAPES.values())
    assert {(4096, 1536), (1024, 32768), (1024, 16384), (8192, 4096), (4096, 4096), (2048, 4096)} <= shapes
    assert {c.params["M"] for c in FLASH} == {1, 8, 64, 256, 512, 4096}
    assert all(c.params["M"] * c.params["N"] <= mod.MAX_OUTPUT for c in FLASH)
    assert len({c.name for c in mod.cases()}) == len(mod.cases())


def test_tiny_cases_cover_the_tails():
    assert any(c.params["N"] % 128 for c in TINY) and any(c.params["K"] % 128 for c in TINY)
    assert any(c.params["M"] == 1 for c in TINY)
    assert all(c.params["M"] * c.params["N"] * c.params["K"] <= 1 << 20 for c in TINY)


def test_cost_is_the_gemm_traffic():
    case = next(c for c in FLASH if c.name == "wo_b_m4096")
    nbytes, flops = mod.cost(case)
    assert flops == 2.0 * 4096 * 4096 * 8192
    assert nbytes == 4096 * 8192 * 2 + 4 * (4096 * 64 + 32 * 64) + 2 * 4096 * 4096


# ---------------------------------------------------------------------------------------------- through the CLI

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_fp8_block_gemm]
"""
OP = "planted_fp8_block_gemm"
SQUARE, K_TAIL = "tiny_m3_k256_n256", "tiny_m4_k320_n256"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    if torch.cuda.is_available():
        pytest.skip("the Triton interpreter runs on a CPU host; a GPU host runs the flash cases")
    tmp = tmp_path_factory.mktemp("planted_fp8")
    r, run = run_op(tmp, PROFILE, OP)
    m = run.measurements
    over = breaches(m, {OP: CEIL})
    flagged = set(zip(over["impl"], over["case"].str.split("/").str[1]))
    o = m[m["metric"] == "outcome"]
    status = {(i, c.split("/")[1]): s for i, c, s in zip(o["impl"], o["case"], o["status"])}
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, flagged, status, values


@pytest.mark.parametrize("impl", ["sglang.triton", "sglang.triton.linear"])
def test_clean_sglang_paths_are_within_the_bf16_ceilings(measured, impl):
    r, flagged, status, v = measured
    for case in TINY:
        key = (impl, case.name)
        if impl == "sglang.triton.linear" and case.params["K"] % 128:
            assert status[key].startswith("skipped(K=320 is not a multiple of 128"), status[key]
            continue
        assert status[key] == "ok", (key, status[key], r.stderr[-2000:])
        assert 0 < v[(*key, "calc_diff")] < 1e-5
        assert v[(*key, "worst_row_calc_diff")] < 5e-5
        assert v[(*key, "worst_tile_calc_diff")] < 5e-5
        assert key not in flagged


def test_gpu_paths_are_skipped_with_their_reason(measured):
    _, _, status, _ = measured
    for case in TINY:
        assert status[("sglang.cutlass", case.name)] == "skipped(needs a CUDA GPU: sm_120, sm_121)"
        assert status[("sglang.cutlass.linear", case.name)] == "skipped(needs a CUDA GPU: sm_120, sm_121)"
        assert status[("deepgemm", case.name)].startswith("skipped(needs a CUDA GPU")


@pytest.mark.parametrize(
    "fault, case",
    [
        ("weight_scale_transposed", SQUARE),
        ("weight_scale_off_by_one", SQUARE),
        ("weight_scale_off_by_one", K_TAIL),
        ("act_scale_per_tensor", SQUARE),
        ("act_scale_per_tensor", K_TAIL),
        ("act_scale_first_group", SQUARE),
        ("k_tail_dropped", K_TAIL),
    ],
)
def test_fault_is_flagged(measured, fault, case):
    r, flagged, status, v = measured
    impl = f"planted.{fault}"
    assert status[(impl, case)] == "ok", status[(impl, case)]
    clean = max(v[("sglang.triton", case, m)] for m in ("worst_row_calc_diff", "worst_tile_calc_diff"))
    worst = max(v[(impl, case, m)] for m in ("worst_row_calc_diff", "worst_tile_calc_diff"))
    assert worst > 5e-5, f"{fault} on {case}: worst {worst:.3g} is under the ceilings"
    assert worst > 10 * clean
    assert (impl, case) in flagged
    assert r.returncode == 1


def test_per_tensor_activation_scale_hides_in_the_global_calc_diff(measured):
    """The outlier token carries the tensor's energy, and its own quantization is unchanged: only the
    per-row and per-tile metrics see the small tokens a per-tensor scale flushes."""
    _, _, _, v = measured
    assert v[("planted.act_scale_per_tensor", SQUARE, "calc_diff")] < 1e-5
    assert v[("planted.act_scale_per_tensor", SQUARE, "worst_row_calc_diff")] > 5e-5

"""kernels/fp8_block32_gemm.py: its inputs are what the DTYPE claims (exactly quantizable at 32x32 blocks
under SGLang's UE8M0 ceil rule, production layout), its oracle and tile metric are right, its flash shapes
are V4.1-Flash's (every [32, 32] tuned file SGLang ships names one), SGLang's dispatcher sends such a
checkpoint to the Triton route on SM120, and SGLang's real Triton GEMM under the interpreter, run through
the CLI, passes clean while each planted fault (tests/ops/planted_fp8_block32_gemm.py) is flagged."""

import json
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.parity.op import require_root
from harness.results.ceilings import default_ceilings
from tests.conftest import OPS, ROOT, needs_sglang, run_planted

op = load_op_file(ROOT / "kernels" / "fp8_block32_gemm.py")
mod = op.module
planted = load_op_file(OPS / "planted_fp8_block32_gemm.py").module
TINY = [c for c in mod.cases() if "tiny" in c.tags]
FLASH = [c for c in mod.cases() if "flash" in c.tags]
CEIL = {**default_ceilings(mod.DTYPE), **mod.CEILINGS}
B = mod.BLOCK


def _inputs(case):
    return mod.make_inputs(case, torch.Generator().manual_seed(0))


def _dims(case):
    return (case.params[k] for k in ("M", "K", "N"))


# ---------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_inputs_are_the_production_layout(case):
    M, K, N = _dims(case)
    kb, nb = math.ceil(K / B), math.ceil(N / B)
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
def test_every_group_has_its_ue8m0_scale_by_two_formulas(case):
    """Per (token, 32-group), tail groups included: the stored scale is 2^ceil(log2(amax / 448)) computed
    in float64, and x / scale is `a` exactly."""
    M, K, _ = _dims(case)
    t = _inputs(case)
    x = t["x"].double()
    for g in range(math.ceil(K / B)):
        cols = slice(B * g, min(B * (g + 1), K))
        amax = x[:, cols].abs().amax(1)
        want = torch.pow(2.0, torch.ceil(torch.log2(amax / 448.0)))
        assert torch.equal(want, t["a_scale"][:, g].double())
        q = (x[:, cols] / want[:, None]).to(torch.float8_e4m3fn)
        assert torch.equal(q.view(torch.uint8), t["a"][:, cols].view(torch.uint8))


@pytest.mark.parametrize("case", [c for c in TINY if c.params["K"] % 32 == 0], ids=lambda c: c.name)
def test_sglangs_ue8m0_rule_returns_a_and_its_scales(case):
    """The JIT kernel's arithmetic (fp32 amax * fp32(1/448), exponent rounded up from the bits) gives back
    exactly the stored operands, while rounding that exponent to nearest changes at least one group of
    every token (the planted fault's premise: all of them saturate)."""
    t = _inputs(case)
    q, s = planted.ue8m0_quantize(t["x"], B, "ceil")
    assert torch.equal(s, t["a_scale"]) and torch.equal(q.view(torch.uint8), t["a"].view(torch.uint8))
    _, s_near = planted.ue8m0_quantize(t["x"], B, "nearest")
    assert (s_near != s).any(1).all()
    assert (s_near <= s).all()  # nearest only ever rounds these tops down


def test_group_tops_reach_both_sides_of_the_rounding_boundary():
    t = _inputs(next(c for c in TINY if c.name == "tiny_m65_k96_n72"))
    tops = (t["a"].float().abs().view(65, -1, B).amax(-1)).unique().tolist()
    assert set(tops) <= set(mod.TOPS) and min(tops) < 448 / math.sqrt(2) < max(tops)


def test_token_scales_span_an_outlier_range():
    t = _inputs(next(c for c in TINY if c.params["M"] >= 3))
    per_token = t["a_scale"].log2().amax(1)
    assert float(per_token.max() - per_token.min()) >= 8


# ---------------------------------------------------------------------------------------------- oracle, metric


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_oracle_is_the_sum_of_scaled_block_products(case):
    """Written the other way round: per K-group products of the raw e4m3 values, each scaled by its
    token's group scale and its weight block's scale (per 32 output columns), then summed."""
    M, K, N = _dims(case)
    t = _inputs(case)
    a, w = t["a"].double(), t["weight"].double()
    want = torch.zeros(M, N, dtype=torch.float64)
    for g in range(math.ceil(K / B)):
        cols = slice(B * g, B * (g + 1))
        col_scale = t["weight_scale_inv"][:, g].double().repeat_interleave(B)[:N]
        want += (a[:, cols] @ w[:, cols].T) * t["a_scale"][:, g : g + 1].double() * col_scale[None, :]
    got = mod.oracle(t, case)["out"]
    assert got.dtype == torch.float64 and got.shape == (M, N)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_oracle_element_by_element():
    """A few outputs of the K-tail case as plain Python sums over k, each term's scales indexed by hand
    (k // 32 for the group, n // 32 for the weight-scale row): the last column sits in the 8-wide block."""
    case = next(c for c in TINY if c.name == "tiny_m1_k224_n200")
    t = _inputs(case)
    a, w = t["a"].float().tolist(), t["weight"].float().tolist()
    sa, sw = t["a_scale"].tolist(), t["weight_scale_inv"].tolist()
    got = mod.oracle(t, case)["out"]
    for m, n in [(0, 0), (0, 31), (0, 32), (0, 199)]:
        want = math.fsum(a[m][k] * sa[m][k // 32] * w[n][k] * sw[n // 32][k // 32] for k in range(224))
        assert float(got[m, n]) == pytest.approx(want, rel=1e-13, abs=0)


def test_tile_metric_finds_one_corrupted_tile():
    case = next(c for c in TINY if c.name == "tiny_m4_k176_n160")
    t = _inputs(case)
    ref = mod.oracle(t, case)["out"]
    clean = ref.to(torch.bfloat16)
    (m,) = mod.metrics({"out": clean}, {"out": ref}, t, case)
    assert m.name == "worst_tile_calc_diff" and 0 < m.value < 8e-6  # RN: at most (2^-8)^2 / 2 per element
    bad = clean.clone()
    bad[2, 64:70] *= 1.05  # six outputs of token 2 in the third 32-column block
    (m,) = mod.metrics({"out": bad}, {"out": ref}, t, case)
    assert m.value > CEIL["worst_tile_calc_diff"] and m.detail == {"row": 2, "n_block": 2}
    bad[0, 5] = float("nan")
    (m,) = mod.metrics({"out": bad}, {"out": ref}, t, case)
    assert m.value == math.inf and m.detail == {"row": 0, "n_block": 0}


# ---------------------------------------------------------------------------------------------- cases


def test_tiny_cases_cover_the_tails():
    for p in (32, 64, 128):
        assert any(c.params["N"] % p for c in TINY) and any(c.params["K"] % p for c in TINY)
    assert any(c.params["M"] == 1 for c in TINY) and any(c.params["M"] > 64 for c in TINY)
    assert all(c.params["M"] * c.params["N"] * c.params["K"] <= 1 << 20 for c in TINY)


def test_flash_cases_are_the_v41_flash_projections():
    by_name = {c.name: c for c in FLASH}
    assert len(by_name) == len(FLASH) and len({c.name for c in mod.cases()}) == len(mod.cases())
    # hidden 5120, q_lora 1280, 64 heads x 512, o_groups 8 x o_lora 1024
    assert (by_name["m1_tp1_wqkv_a"].params["K"], by_name["m1_tp1_wqkv_a"].params["N"]) == (5120, 1280 + 512)
    assert by_name["m1_tp1_wq_b"].params["N"] == 64 * 512 and by_name["m1_tp1_wq_b"].params["K"] == 1280
    assert by_name["m1_tp1_wo_b"].params["K"] == 8 * 1024 and by_name["m1_tp1_wo_b"].params["N"] == 5120
    for c in FLASH:
        tp = int(re.match(r"m\d+_tp(\d)_", c.name).group(1))
        assert (f"tp{tp}" in c.tags) == (tp > 1)
        assert c.params["M"] * c.params["N"] <= mod.MAX_OUTPUT
    tp2_decode = {c.name for c in FLASH if re.match(r"m[18]_tp[12]_", c.name)}
    assert {"m1_tp1_wqkv_a", "m8_tp2_wq_b", "m8_tp2_wo_b", "m1_tp2_shared_down"} <= tp2_decode


def test_every_shipped_block32_tuned_file_is_a_flash_shape():
    """SGLang's [32, 32] tuned files (H200, TP4/TP8 ranks of V4.1-Flash) name (N, K) pairs: each is a
    shape the flash cases run, which is what the assumed Engram and shared-expert sizes rest on."""
    needs_sglang()
    configs = require_root() / "sglang" / "kernels" / "ops" / "gemm" / "configs"
    named = {
        (int(m["K"]), int(m["N"]))
        for f in configs.glob("*block_shape=[[]32, 32[]].json")
        if (m := re.match(r"N=(?P<N>\d+),K=(?P<K>\d+),", f.name))
    }
    assert len(named) >= 10
    assert named <= {(c.params["K"], c.params["N"]) for c in FLASH}


def test_cost_is_the_gemm_traffic():
    case = next(c for c in FLASH if c.name == "m4096_tp8_wq_b")
    nbytes, flops = mod.cost(case)
    assert (case.params["K"], case.params["N"]) == (1280, 4096)
    assert flops == 2.0 * 4096 * 4096 * 1280
    assert nbytes == 4096 * 1280 * 2 + 4 * (4096 * 40 + 128 * 40) + 2 * 4096 * 4096


# ---------------------------------------------------------------------------------------------- selection


def test_sglang_sends_a_v41_checkpoint_to_the_triton_route_on_sm120():
    """dispatch_w8a8_block_fp8_linear([32, 32], act_scale_ue8m0=True) under SGLang's own platform override:
    Triton with UE8M0 activation scales on SM120 whatever the backend and DeepGEMM, never the MXFP8 view;
    DeepGEMM's block-32 route on SM90 with DeepGEMM on. In a process of its own (SGLang's import is heavy)."""
    needs_sglang()
    script = textwrap.dedent(
        """
        import json
        from unittest import mock
        from sglang.srt.layers import deep_gemm_wrapper as dgw
        from sglang.srt.layers.quantization import fp8_utils as u
        from sglang.srt.runtime_context import override_platform
        B = u.Fp8GemmRunnerBackend
        flags = ("is_sm90", "is_sm100", "is_sm110", "is_sm120", "is_blackwell")
        SM = {"sm120": {"is_sm120", "is_blackwell"}, "sm90": {"is_sm90"}}
        out = {}
        for arch, on in SM.items():
            for backend in (B.AUTO, B.CUTLASS, B.TRITON, B.DEEP_GEMM):
                for dg in (False, True):
                    with override_platform(**{f: f in on for f in flags}), \\
                            mock.patch.object(u, "FP8_GEMM_RUNNER_BACKEND", backend), \\
                            mock.patch.object(dgw, "ENABLE_JIT_DEEPGEMM", dg):
                        linear = u.dispatch_w8a8_block_fp8_linear([32, 32], act_scale_ue8m0=True)
                        mx = u.can_serve_block_fp8_as_mxfp8([32, 32], "ue8m0")
                    out[f"{arch}/{backend.value}/{dg}"] = [
                        getattr(linear, "func", linear).__name__, dict(getattr(linear, "keywords", {})), mx]
        print(json.dumps(out))
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    picks = json.loads(r.stdout.strip().splitlines()[-1])
    triton = ["triton_w8a8_block_fp8_linear", {"act_scale_ue8m0": True}, False]
    for key, pick in picks.items():
        arch, backend, dg = key.split("/")
        if arch == "sm90" and dg == "True" and backend in ("auto", "deep_gemm"):
            assert pick == ["deepgemm_w8a8_block_fp8_linear_with_fallback", {"act_scale_ue8m0": True}, False], key
        else:
            assert pick == triton, key


# ---------------------------------------------------------------------------------------------- through the CLI

OP = "planted_fp8_block32_gemm"
PROFILE = f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n'
K_TAIL = "tiny_m4_k176_n160"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    if torch.cuda.is_available():
        pytest.skip("the Triton interpreter runs on a CPU host; a GPU host runs the flash cases")
    r, run, over = run_planted(tmp_path_factory.mktemp(OP), PROFILE, OP)
    m = run.measurements
    flagged = set(zip(over["impl"], over["case"].str.split("/").str[1]))
    o = m[m["metric"] == "outcome"]
    status = {(i, c.split("/")[1]): s for i, c, s in zip(o["impl"], o["case"], o["status"])}
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, flagged, status, values


@pytest.mark.parametrize("impl", ["sglang.triton", "control.ue8m0_ceil"])
def test_clean_paths_are_within_the_bf16_ceilings(measured, impl):
    r, flagged, status, v = measured
    for case in TINY:
        key = (impl, case.name)
        if impl == "control.ue8m0_ceil" and case.params["K"] % 32:
            assert status[key].startswith("skipped(K=176 is not a multiple of 32"), status[key]
            continue
        assert status[key] == "ok", (key, status[key], r.stderr[-2000:])
        assert 0 < v[(*key, "calc_diff")] < 1e-5  # one bf16 rounding, not zero
        assert v[(*key, "worst_row_calc_diff")] < 5e-5
        assert v[(*key, "worst_tile_calc_diff")] < 5e-5
        assert key not in flagged


def test_the_control_quantizer_gives_sglangs_gemm_the_same_operands(measured):
    """ceil-rounded UE8M0 from bf16 reproduces `a` and its scales bit for bit: the same figures as the
    pre-quantized GEMM, so the nearest-rounding fault is that one rounding and nothing else."""
    _, _, _, v = measured
    for case in TINY:
        if case.params["K"] % 32 == 0:
            assert v[("control.ue8m0_ceil", case.name, "calc_diff")] == v[("sglang.triton", case.name, "calc_diff")]


def test_gpu_paths_are_skipped_with_their_reason(measured):
    _, _, status, _ = measured
    for case in TINY:
        assert status[("sglang.triton.linear", case.name)] == "skipped(needs a CUDA GPU)"
        assert status[("sglang.sm90.dispatch", case.name)] == "skipped(needs a CUDA GPU: sm_90)"


@pytest.mark.parametrize(
    "fault, cases",
    [
        ("ue8m0_nearest", [c.name for c in TINY if c.params["K"] % 32 == 0]),
        ("k_scale_step_128", [c.name for c in TINY]),
        ("n_scale_group_128", [c.name for c in TINY]),
    ],
)
def test_fault_is_flagged(measured, fault, cases):
    r, flagged, status, v = measured
    impl = f"planted.{fault}"
    for case in cases:
        assert status[(impl, case)] == "ok", status[(impl, case)]
        clean = v[("sglang.triton", case, "calc_diff")]
        got = v[(impl, case, "calc_diff")]
        assert got > CEIL["calc_diff"] and got > 50 * clean, (fault, case, got)
        assert (impl, case) in flagged
    assert r.returncode == 1

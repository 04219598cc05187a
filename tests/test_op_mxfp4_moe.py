"""kernels/mxfp4_moe.py: the oracle against hand-built cases and the MX spec, the inputs' production layout,
SGLang's FlashInfer glue up to the kernel call, and planted faults through the real engine (SGLang's FP4
dequant + Triton path under the interpreter): each flagged, the clean path not."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.parity.inputs import build_inputs
from harness.parity.op import Case
from harness.results.ceilings import breaches
from tests.conftest import OPS, ROOT, needs_sglang, run_op

op = load_op_file(ROOT / "kernels" / "mxfp4_moe.py").module


# ---------------------------------------------------------------------------------------------- oracle


def _spec_e2m1(code: int) -> float:
    """OCP MX v1.0 E2M1: 1 sign, 2 exponent (bias 1), 1 mantissa bit; exponent 0 is subnormal (0 or 0.5)."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp, man = (code >> 1) & 0b11, code & 1
    return sign * (0.5 * man if exp == 0 else 2.0 ** (exp - 1) * (1 + man / 2))


def test_e2m1_decode_follows_the_spec_and_the_low_nibble_is_the_even_element():
    lo, hi = torch.arange(16).repeat_interleave(16), torch.arange(16).repeat(16)
    packed = (hi << 4 | lo).to(torch.uint8).view(torch.int8)
    values = op.decode_e2m1(packed.view(256, 1))
    assert values.shape == (256, 2)
    assert values[:, 0].tolist() == [_spec_e2m1(int(c)) for c in lo]
    assert values[:, 1].tolist() == [_spec_e2m1(int(c)) for c in hi]
    assert sorted({abs(_spec_e2m1(c)) for c in range(16)}) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_e8m0_decode():
    b = torch.tensor([0, 1, 126, 127, 128, 254], dtype=torch.uint8)
    assert op.decode_e8m0(b).tolist() == [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 2.0**127]


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] e2m1 codes -> [..., K/2] int8, even k in the low nibble."""
    c = codes.to(torch.uint8)
    return (c[..., 1::2] << 4 | c[..., 0::2]).view(torch.int8)


def test_oracle_matches_a_hand_computed_moe():
    """Two experts, top-2, H 64, I 32, weights built from known codes and scales; the expected output is
    computed token by token with the DeepSeek-V4 rule, the clamp engaged on purpose."""
    gen = torch.Generator().manual_seed(3)
    E, H, inter, T = 2, 64, 32, 3
    codes13 = torch.randint(0, 16, (E, 2 * inter, H), generator=gen)
    codes2 = torch.randint(0, 16, (E, H, inter), generator=gen)
    exp13 = torch.randint(121, 124, (E, 2 * inter, H // 32), generator=gen)
    exp2 = torch.randint(121, 124, (E, H, inter // 32), generator=gen)
    table = torch.tensor([_spec_e2m1(c) for c in range(16)], dtype=torch.float64)
    w13 = table[codes13] * torch.exp2(exp13.double() - 127).repeat_interleave(32, -1)
    w2 = table[codes2] * torch.exp2(exp2.double() - 127).repeat_interleave(32, -1)
    x = (torch.randn(T, H, generator=gen) * torch.tensor([[0.3], [1.0], [16.0]])).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [1, 0], [0, 1]], dtype=torch.int32)
    weights = torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]])
    t = {
        "hidden_states": x,
        "topk_ids": ids,
        "topk_weights": weights,
        "w13_weight": _pack(codes13),
        "w2_weight": _pack(codes2),
        "w13_weight_scale_inv": exp13.to(torch.uint8),
        "w2_weight_scale_inv": exp2.to(torch.uint8),
    }
    case = Case("hand", dict(E=E, topk=2, H=H, I=inter))
    got = op.oracle(t, case)

    want = torch.zeros(T, H, dtype=torch.float64)
    clamped = torch.zeros(T, dtype=torch.float64)
    for i in range(T):
        for k in range(2):
            e = int(ids[i, k])
            h = w13[e] @ x[i].double()
            up, gate = h[:inter], h[inter:]  # the inputs' order is [up; gate]
            clamped[i] += float(((up.abs() > 10) | (gate > 10)).sum()) / (2 * inter)
            a = torch.nn.functional.silu(gate.clamp(max=10.0)) * up.clamp(-10.0, 10.0)
            want[i] += float(weights[i, k]) * (w2[e] @ a)
    torch.testing.assert_close(got["out"], 1.5 * want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["clamped"], clamped, rtol=0, atol=1e-15)
    assert clamped[2] > 0.05 and clamped[0] == 0, "the case must exercise the clamp on one token only"


# ---------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("name", [c.name for c in op.cases() if "tiny" in c.tags])
def test_tiny_inputs_have_the_production_layout(name):
    case = next(c for c in op.cases() if c.name == name)
    p = case.params
    t = build_inputs(op, op.OP, case, seed=0)
    T, E, H, inter, k = p["T"], p["E"], p["H"], p["I"], p["topk"]
    assert t["hidden_states"].shape == (T, H) and t["hidden_states"].dtype == torch.bfloat16
    assert t["w13_weight"].shape == (E, 2 * inter, H // 2) and t["w13_weight"].dtype == torch.int8
    assert t["w2_weight"].shape == (E, H, inter // 2) and t["w2_weight"].dtype == torch.int8
    assert t["w13_weight_scale_inv"].shape == (E, 2 * inter, H // 32) and t["w13_weight_scale_inv"].dtype == torch.uint8
    assert t["w2_weight_scale_inv"].shape == (E, H, inter // 32)
    ids, w = t["topk_ids"], t["topk_weights"]
    assert ids.dtype == torch.int32 and ids.shape == (T, k) and int(ids.min()) >= 0 and int(ids.max()) < E
    assert all(len(set(row)) == k for row in ids.tolist()), "an expert twice for one token"
    torch.testing.assert_close(w.sum(-1), torch.ones(T))  # renormalised; the 1.5 is not in the inputs
    codes = torch.cat([t["w13_weight"].view(torch.uint8) & 0xF, t["w13_weight"].view(torch.uint8) >> 4])
    assert torch.bincount(codes.flatten().long(), minlength=16).min() > 0, "some e2m1 code never occurs"
    clamped = op.oracle(t, case)["clamped"]
    assert 0 < int((clamped > 0).sum()) <= max(1, T // 2), "the loud tokens, and only they, reach the limit"


def test_flash_cases_are_deepseek_v4_flash_at_tp1_to_tp8():
    flash = [c for c in op.cases() if "flash" in c.tags]
    # the token sweep at TP=2 (the reference two-GPU SM120 deployment), at TP=4 and TP=8 (tagged for the
    # tp4-tp8 profile), one TP=1 size
    sweep = {(t, tp) for t in (1, 8, 64, 512, 4096) for tp in (2, 4, 8)}
    assert {(c.params["T"], c.params["tp"]) for c in flash} == sweep | {(64, 1)}
    assert all(f"tp{c.params['tp']}" in c.tags for c in flash if c.params["tp"] >= 4)
    for c in flash:
        p = c.params
        assert (p["E"], p["topk"], p["H"], p["I"] * p["tp"]) == (256, 6, 4096, 2048)
        nbytes, flops = op.cost(c)
        assert flops == 2.0 * p["T"] * 6 * 3 * p["I"] * 4096 and nbytes > p["T"] * 4096 * 4


# ---------------------------------------------------------------------------------------------- SGLang glue

GLUE = r"""
import enum, importlib.machinery, json, sys, types
import torch

calls = {}

def module(name):
    m = types.ModuleType(name)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m
    return m

fi, fm, core = module("flashinfer"), module("flashinfer.fused_moe"), module("flashinfer.fused_moe.core")
fi.fused_moe, fm.core = fm, core

class ActivationType(enum.IntEnum):
    Swiglu = 3
    SwigluStep = 9

core.ActivationType = ActivationType

def mxfp8_quantize(x, is_sf_swizzled_layout=True, alignment=32):
    calls["mxfp8_quantize"] = [list(x.shape), is_sf_swizzled_layout, alignment]
    return x.to(torch.float8_e4m3fn), torch.zeros(x.numel() // 32, dtype=torch.uint8)

def block_scale_interleave(s):
    calls.setdefault("interleaved", []).append(list(s.shape))
    return s.flatten().clone()

def interleave_moe_weights_for_sm90_mixed_gemm(w, kind):
    calls.setdefault("sm90_weights", []).append([list(w.shape), str(w.dtype), kind])
    return w.clone()

def interleave_moe_scales_for_sm90_mixed_gemm(s, group_size=32):
    calls.setdefault("sm90_scales", []).append([list(s.shape), str(s.dtype), group_size])
    return s.clone()

fm.interleave_moe_weights_for_sm90_mixed_gemm = interleave_moe_weights_for_sm90_mixed_gemm
fm.interleave_moe_scales_for_sm90_mixed_gemm = interleave_moe_scales_for_sm90_mixed_gemm

def cutlass_fused_moe(**kw):
    calls["kw"] = kw
    kw["output"].fill_(1.0)
    return [kw["output"]]

fi.mxfp8_quantize, fi.block_scale_interleave = mxfp8_quantize, block_scale_interleave
fm.cutlass_fused_moe = cutlass_fused_moe

sys.path.insert(0, ".")
from pathlib import Path
from harness.parity.catalogue import load_op_file
from harness.parity.inputs import build_inputs
from harness.workers.sglang_src import import_module

op = load_op_file(Path("kernels/mxfp4_moe.py")).module
for name in ("quantization.mxfp4_flashinfer_cutlass_moe", "moe.moe_runner.flashinfer_cutlass"):
    import_module("sglang.srt.layers." + name).is_flashinfer_available = lambda: True  # it also requires CUDA
rc = import_module("sglang.srt.runtime_context")
case = next(c for c in op.cases() if c.name == "tiny_t16")
t = build_inputs(op, op.OP, case, seed=0)
w13, s13 = t["w13_weight"], t["w13_weight_scale_inv"]
report = {}
for arch, facts in (("sm120", dict(is_sm120=True, is_sm90=False)), ("sm90", dict(is_sm120=False, is_sm90=True))):
    calls.clear()
    with rc.override_platform(**facts):
        out = op.sglang_flashinfer_mxfp4(t, case)["out"]
    kw = calls["kw"]
    report[arch] = {
        "out": [list(out.shape), str(out.dtype), float(out.float().mean())],
        "input": str(kw["input"].dtype),
        "fc1": [str(kw["fc1_expert_weights"].dtype), list(kw["fc1_expert_weights"].shape)],
        "scales_x_1_5": torch.allclose(kw["token_final_scales"], t["topk_weights"] * 1.5),
        "experts": torch.equal(kw["token_selected_experts"], t["topk_ids"]),
        "swiglu_limit": kw["swiglu_limit"].tolist(),
        "alpha_beta": [kw["swiglu_alpha"], kw["swiglu_beta"]],
        "mxfp8_act": kw["use_mxfp8_act_scaling"], "w4_group": kw["use_w4_group_scaling"],
        "activation": int(kw["activation_type"]),
        "quant_scales": [str(s.dtype) for s in kw["quant_scales"]],
        "calls": {k: v for k, v in calls.items() if k != "kw"},
    }
    if arch == "sm120":
        fc1 = kw["fc1_expert_weights"].view(torch.int8).view_as(w13)
        report[arch]["fc1_is_input_w13"] = torch.equal(fc1, w13)
        report[arch]["w13_scale_bytes"] = torch.equal(kw["quant_scales"][0].view(torch.uint8).flatten(), s13.flatten())
print(json.dumps(report))
"""


def test_sglang_flashinfer_path_reaches_cutlass_fused_moe_with_the_production_arguments():
    """SGLang's own method, post-load processing, runner and fused func, on the CPU up to FlashInfer (faked
    here, in a subprocess of its own), for both branches of the method. SM120: the checkpoint's [up; gate]
    W13 untouched, scales through block_scale_interleave, MXFP8 activations. SM90: the mixed-GEMM
    interleave of weights and scales, bf16 activations, W4 group scaling. Both: the top-k weights times
    1.5, the limit 10 for every expert, alpha and beta left to FlashInfer's defaults. The kernel's
    numbers need the GPU."""
    needs_sglang()
    r = subprocess.run([sys.executable, "-c", GLUE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for arch in ("sm120", "sm90"):
        g = got[arch]
        assert g["out"] == [[16, 256], "torch.bfloat16", 1.0]
        assert g["scales_x_1_5"] and g["experts"]
        assert g["swiglu_limit"] == [10.0] * 8 and g["alpha_beta"] == [None, None]
        assert g["activation"] == 3
    sm120, sm90 = got["sm120"], got["sm90"]
    assert sm120["fc1"] == ["torch.int64", [8, 256, 16]] and sm120["fc1_is_input_w13"]
    assert sm120["input"] == "torch.float8_e4m3fn" and sm120["mxfp8_act"] is True and sm120["w4_group"] is False
    assert sm120["quant_scales"] == ["torch.int32", "torch.float32", "torch.int32", "torch.float32"]
    assert sm120["w13_scale_bytes"], "the fake interleave is the identity: the scales must arrive unchanged"
    assert sm120["calls"] == {"interleaved": [[8, 256, 8], [8, 256, 4]], "mxfp8_quantize": [[16, 256], True, 32]}
    assert sm90["input"] == "torch.bfloat16" and sm90["mxfp8_act"] is False and sm90["w4_group"] is True
    assert sm90["quant_scales"] == ["torch.int32", "torch.int32"]
    assert sm90["calls"] == {
        "sm90_weights": [[[8, 256, 128], "torch.uint8", "fp4"], [[8, 256, 64], "torch.uint8", "fp4"]],
        "sm90_scales": [[[8, 256, 8], "torch.uint8", 32], [[8, 256, 4], "torch.uint8", 32]],
    }


# ---------------------------------------------------------------------------------------------- goldens


class _ReferenceDeepGemm:
    """DeepGEMM's contiguous grouped FP8 x FP4 GEMM as its documentation states it, in torch: row i of d is
    A_i B_{g(i)}^T for g(i) = grouped_layout[i] >= 0; A per-128 scaled FP8, B packed e2m1 with per-32 scales."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def get_mk_alignment_for_contiguous_layout():
        return 128

    def m_grouped_fp8_fp4_gemm_nt_contiguous(self, a, b, d, grouped_layout, recipe_a=None, recipe_b=None):
        self.calls.append((recipe_a, recipe_b, grouped_layout.dtype, a[0].dtype, b[0].dtype, d.dtype))
        a_val = a[0].double() * a[1].double().repeat_interleave(128, -1)
        valid = grouped_layout >= 0
        w = op.dequantize(b[0], torch.log2(b[1].double()).add(127).round().to(torch.uint8))
        out = torch.zeros(d.shape, dtype=torch.float64)
        for g in grouped_layout[valid].unique().tolist():
            rows = grouped_layout == g
            out[rows] = a_val[rows] @ w[g].T
        d.copy_(out.to(d.dtype))


def test_deepgemm_golden_lays_out_groups_and_combines_rows(monkeypatch):
    """The DeepGEMM golden's own glue (contiguous layout with -1 padding, UE8M0 activation scales, the
    [up; gate] split, the routed sum) around a torch stand-in for the GEMM: it lands on the oracle within
    the FP8 rounding, and every row reaches its expert."""
    from harness.parity import deepgemm

    fake = _ReferenceDeepGemm()
    monkeypatch.setattr(deepgemm, "load", lambda: fake)
    case = next(c for c in op.cases() if c.name == "tiny_t40_hot")
    t = build_inputs(op, op.OP, case, seed=0)
    got = op.deepgemm_fp8_fp4(t, case)["out"]
    ref = op.oracle(t, case)["out"]
    from harness.parity.drift import calc_diff, worst_row_calc_diff

    assert calc_diff(got, ref) < 3e-3 and worst_row_calc_diff(got, ref)[0] < 5e-3
    assert fake.calls and all(c[:3] == ((1, 128), (1, 32), torch.int32) for c in fake.calls)
    assert fake.calls[0][3:] == (torch.float8_e4m3fn, torch.int8, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- planted faults

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_mxfp4_moe]
"""
FAULTS = [
    "nibble_order_swapped",
    "scale_exponent_off_by_one",
    "gate_up_swapped",
    "swiglu_limit_ignored",
    "wrong_expert_weights",
    "routed_scaling_twice",
]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_mxfp4")
    r, run = run_op(tmp, PROFILE, "planted_mxfp4_moe")
    planted = load_op_file(OPS / "planted_mxfp4_moe.py")
    m = run.measurements
    over = set(breaches(m, {"planted_mxfp4_moe": planted.ceilings})["impl"])
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    return r, over, {(impl, metric): v for impl, metric, v in zip(m["impl"], m["metric"], m["value"])}


def test_clean_path_is_within_the_ceilings(measured):
    r, over, v = measured
    assert ("sglang.fp4_dequant_triton", "calc_diff") in v, r.stdout[-3000:] + r.stderr[-3000:]
    # two FP8 roundings of about 2.6% each: calc_diff near 1e-3, far under the fp4 ceiling
    assert 2e-4 < v[("sglang.fp4_dequant_triton", "calc_diff")] < 3e-3
    assert v[("sglang.fp4_dequant_triton", "gain_error")] < 1e-2
    assert "sglang.fp4_dequant_triton" not in over


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_flagged(measured, fault):
    r, over, v = measured
    clean = v[("sglang.fp4_dequant_triton", "worst_row_calc_diff")]
    worst = v[(f"planted.{fault}", "worst_row_calc_diff")]
    assert worst > 10 * clean, f"{fault}: worst row {worst:.3g} against the clean {clean:.3g}"
    assert f"planted.{fault}" in over
    assert r.returncode == 1


def test_a_scale_error_is_invisible_to_cosine_but_not_to_calc_diff_and_gain(measured):
    _, _, v = measured
    assert v[("planted.scale_exponent_off_by_one", "cosine")] > 0.99
    assert v[("planted.scale_exponent_off_by_one", "calc_diff")] > 0.1
    assert math.isclose(v[("planted.scale_exponent_off_by_one", "gain_error")], 1.0, abs_tol=0.05)
    assert math.isclose(v[("planted.routed_scaling_twice", "gain_error")], 0.5, abs_tol=0.05)


def test_an_ignored_clamp_shows_on_the_clamped_rows(measured):
    _, _, v = measured
    assert v[("planted.swiglu_limit_ignored", "clamped_rows_calc_diff")] > 10 * op.CEILINGS["clamped_rows_calc_diff"]

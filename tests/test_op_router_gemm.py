"""Router GEMM (kernels/router_gemm.py): the fp64 oracle against a second formulation and SGLang's own
definition of the kernel (F.linear); the tiny_gemm threshold SGLang computes for SM120; through the real
CLI engine, linear_bf16_fp32 within the fp32 ceilings and a copy of bf16_fp32.py with its fp32 output
dropped flagged. tiny_gemm_bf16 and MoEGate.forward are JIT CUDA / CUDA-only (skipped here, audited)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.parity.catalogue import load_module
from harness.parity.drift import calc_diff
from tests.conftest import ROOT, needs_sglang, run_planted

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_router_gemm]
"""


def _op():
    return load_module(Path(ROOT / "kernels" / "router_gemm.py"))


def test_oracle_agrees_with_a_second_formulation():
    op = _op()
    case = next(c for c in op.cases() if c.name == "tiny_m17")
    t = op.make_inputs(case, torch.Generator().manual_seed(3))
    got = op.oracle(t, case)["logits"]
    # elementwise products summed in another order, and F.linear in fp32 (tiny_gemm_bf16's stated equal)
    second = (t["x"].double()[:, None, :] * t["weight"].double()[None, :, :]).sum(-1)
    assert (got - second).abs().max() < 1e-12
    assert float(calc_diff(F.linear(t["x"].float(), t["weight"].float()).double(), got)) < 1e-12


def test_tiny_gemm_threshold_on_sm120(monkeypatch):
    """tiny_router_gemm_max_tokens on a CUDA host of sm 120 for the V4 gate: 16, the op's TINY_MAX_M."""
    needs_sglang()
    from harness.parity.op import import_module

    utils = import_module("sglang.srt.models.deepseek_common.utils")
    monkeypatch.setattr(utils, "_is_cuda", True)
    monkeypatch.setattr(utils, "_device_sm", 120)
    got = utils.tiny_router_gemm_max_tokens(num_experts=256, hidden_size=4096, weight_dtype=torch.bfloat16)
    assert got == _op().TINY_MAX_M == 16
    assert utils.tiny_router_gemm_max_tokens(num_experts=256, hidden_size=4096, weight_dtype=torch.float32) == -1


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    r, run, over = run_planted(tmp_path_factory.mktemp("planted_router_gemm"), PROFILE, "planted_router_gemm")
    m = run.measurements
    flagged = set(zip(over["impl"], over["case"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, flagged, values


def test_linear_bf16_fp32_is_within_the_fp32_ceilings(measured):
    _, flagged, values = measured
    for case in ("tiny_m1", "tiny_m16", "tiny_m17"):
        assert values[("sglang.linear_bf16_fp32", case, "calc_diff")] < 1e-12, case
        assert ("sglang.linear_bf16_fp32", f"planted_router_gemm/{case}") not in flagged


def test_bf16_output_is_caught(measured):
    r, flagged, values = measured
    for case in ("tiny_m1", "tiny_m16", "tiny_m17"):
        assert values[("planted.bf16_output", case, "calc_diff")] > 1e-7, case
        assert ("planted.bf16_output", f"planted_router_gemm/{case}") in flagged
    assert r.returncode == 1

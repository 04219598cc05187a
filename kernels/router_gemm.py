"""DeepSeek-V4 router GEMM: logits[M, 256] fp32 = x[M, 4096] bf16 @ W[256, 4096]^T bf16, the gate's scores
that kernels/moe_fused_gate.py (and kernels/hash_topk.py) route on.

Call site: `srt/models/deepseek_v2.py:DeepseekV2MoE` calls `self.gate(hidden_states, ...)`, a
`MoEGate` (built with is_deepseek_v4=True by `srt/models/deepseek_v4.py`'s decoder layer). The weight is
bf16: MoEGate makes it fp32 only for `config.router_fp32` (Hunyuan-V4), and DeepSeek-V4's config has none,
so it takes the default dtype, the model's bf16. `MoEGate.forward` on a CUDA host (SM120), with
deterministic inference off:
  - M <= `tiny_router_gemm_max_tokens` -> `kernels/ops/gemm/tiny_gemm.py:tiny_gemm_bf16(x, W,
    out_dtype=fp32, max_m=16)`, a JIT CUDA kernel. The threshold is
    `srt/models/deepseek_common/utils.py:tiny_router_gemm_max_tokens`: 16 where CUDA, sm >= 90 (SM120 is
    120), a bf16 weight and `can_use_tiny_gemm(256, 4096, max_m=16)` (K 4096 > N 256: the tiny-N variant,
    256 threads >= 16 rows), else -1. So M 1..16 take tiny_gemm, M >= 17 do not.
  - else `kernels/ops/gemm/bf16_fp32.py:linear_bf16_fp32(x, W)`: SGLANG_OPT_BF16_FP32_GEMM_ALGO defaults
    to "cublas", so `_linear_bf16_fp32_cublas` = torch.mm(x, W.t(), out_dtype=float32) on CUDA (its
    CPU branch is torch.mm of the fp32 copies). The HPC-Ops branch ("hpc") needs compute capability 9.x
    and an fp32 weight, never SM120's; "deep_gemm" is taken only when that env var names it.

The definition (the oracle): the float64 product of the bf16 values. Every bf16 product is exact in
fp32, so the paths differ from it only by fp32 accumulation over K = 4096: fp32's ceilings apply.
Inputs: x ~ N(0, 1) with per-row scales in [0.5, 2] (RMSNorm'd hidden states times its weight), W ~
N(0, 1/4096) (the gate's scale: logits O(1)), both rounded to bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import torch

from harness.parity.op import ORACLE, Case, Path, Unavailable, capturing, case_maker, import_module

OP = "router_gemm"
DTYPE = "fp32"
PRIMARY = "logits"
OUTPUTS = {"logits": "float32"}
TOLERANCE = (1e-5, 1e-5)
EXPERTS, HIDDEN = 256, 4096
TINY_MAX_M = 16  # what tiny_router_gemm_max_tokens gives on SM120 for this shape (asserted by the test)
SM120_SMS = 188  # RTX PRO 6000 Blackwell: tiny_gemm's n_split reads the SM count (audit without a GPU)

_case = case_maker(N=EXPERTS, K=HIDDEN)


def cases() -> list[Case]:
    # M on both sides of the tiny_gemm threshold: 16 is its last row count, 17 the first cuBLAS one
    out = [_case(f"tiny_m{m}", {"tiny"}, M=m) for m in (1, 16, 17)]
    for m in (1, 2, 4, 8, 15, 16, 17, 32, 64, 256, 1024, 4096, 8192):
        out.append(_case(f"m{m}", {"flash"}, M=m))
    return out


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    M, N, K = p["M"], p["N"], p["K"]
    scale = 0.5 + 1.5 * torch.rand(M, 1, generator=gen)
    x = (torch.randn(M, K, generator=gen) * scale).to(torch.bfloat16)
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(torch.bfloat16)
    return {"x": x.contiguous(), "weight": w.contiguous()}


def cost(case: Case) -> tuple[float, float]:
    p = case.params
    M, N, K = p["M"], p["N"], p["K"]
    return float(M * K * 2 + N * K * 2 + M * N * 4), float(2.0 * M * N * K)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition."""
    return {"logits": t["x"].double() @ t["weight"].double().t()}


# ---------------------------------------------------------------------------------------------- paths


@contextlib.contextmanager
def _server_defaults(mod) -> Iterator[None]:
    """MoEGate.forward reads `get_exec().deterministic.enable_deterministic_inference`, published by a
    server: its default (off) stands in for it here, and is put back after."""
    real = mod.get_exec
    mod.get_exec = lambda: SimpleNamespace(deterministic=SimpleNamespace(enable_deterministic_inference=False))
    try:
        yield
    finally:
        mod.get_exec = real


def sglang_moe_gate(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """MoEGate.forward on a stand-in holding what it reads (the module's constructor needs a whole
    model context); the threshold is SGLang's own tiny_router_gemm_max_tokens, so it dispatches as on
    the host it runs on."""
    d2 = import_module("sglang.srt.models.deepseek_v2")
    utils = import_module("sglang.srt.models.deepseek_common.utils")
    w = t["weight"]
    gate = SimpleNamespace(
        weight=w,
        is_deepseek_v4=True,
        rocm_router_max_tokens=-1,
        tiny_router_gemm_max_tokens=utils.tiny_router_gemm_max_tokens(
            num_experts=w.shape[0], hidden_size=w.shape[1], weight_dtype=w.dtype
        ),
    )
    with _server_defaults(d2):
        return {"logits": d2.MoEGate.forward(gate, t["x"])}


def sglang_tiny_gemm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """tiny_gemm_bf16 as MoEGate calls it, on the row counts it is called for (M <= 16)."""
    if case.params["M"] > TINY_MAX_M:
        raise Unavailable(f"MoEGate calls tiny_gemm_bf16 only for M <= {TINY_MAX_M}")
    mod = import_module("sglang.kernels.ops.gemm.tiny_gemm")
    if capturing() and not torch.cuda.is_available():
        mod._get_num_sm = lambda: SM120_SMS  # the audit without a GPU: n_split as on an RTX PRO 6000
    return {"logits": mod.tiny_gemm_bf16(t["x"], t["weight"], out_dtype=torch.float32, max_m=TINY_MAX_M)}


def sglang_linear_bf16_fp32(t: dict, case: Case, fn: str = "linear_bf16_fp32") -> dict[str, torch.Tensor]:
    """linear_bf16_fp32 (cuBLAS algo, the default): MoEGate's call for M > 16, run here on every M."""
    mod = import_module("sglang.kernels.ops.gemm.bf16_fp32")
    return {"logits": getattr(mod, fn)(t["x"], t["weight"])}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 product of the bf16 values"),
    Path(
        "sglang.moe_gate",
        sglang_moe_gate,
        needs_cuda=True,
        note="deepseek_v2.py:MoEGate.forward (tiny_gemm for M <= 16, else cuBLAS); off CUDA it takes F.linear in bf16",
    ),
    Path("sglang.tiny_gemm", sglang_tiny_gemm, needs_cuda=True, note="tiny_gemm.py:tiny_gemm_bf16 (JIT CUDA)"),
    Path("sglang.linear_bf16_fp32", sglang_linear_bf16_fp32, note="bf16_fp32.py:linear_bf16_fp32 (cuBLAS algo)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.models.deepseek_v2:MoEGate.forward": (
        "the fp32-weight (router_fp32), AMX, deterministic and ROCm branches; runs on CUDA only"
    ),
    "sglang.kernels.ops.gemm.tiny_gemm:tiny_gemm_bf16": "the tiny-K variant and fp32 weights (other shapes)",
    "sglang.kernels.ops.gemm.bf16_fp32:linear_bf16_fp32": "the hpc (sm90 only) and deep_gemm algorithms",
}

"""DeepSeek-V4 shared expert: the clamped SwiGLU between gate_up_proj and down_proj,

    y = silu(min(gate, L)) * clamp(up, -L, L),   gate = gate_up[:, :inter], up = gate_up[:, inter:],  L = 10

Call site: `srt/models/deepseek_v2.py DeepseekV2MLP.forward` (DeepseekV4's shared experts are
DeepseekV2MLP built with `swiglu_limit=config.swiglu_limit` and reduce_results=False). Its first
branch (silu + clamp + FP8 quant fused, then DeepGEMM) needs `down_proj.weight.dtype == torch.uint8`;
Fp8LinearMethod creates FP8 checkpoint weights as float8_e4m3fn (fp8.py create_weights), so on SM120
(not HIP, not NPU) it falls to `silu_and_mul_clamp(gate_up, x, float(self.swiglu_limit))`
(`kernels/ops/activation/silu_and_mul_clamp.py`, the JIT CUDA `SiluAndMulClampKernel` of
`csrc/deepseek_v4/silu_and_mul_masked_post_quant.cuh`). L = 10: SGLang asserts `swiglu_limit == 10`
where it fuses the clamp for DeepSeek-V4 (moe_runner/deep_gemm.py, triton_utils/fused_moe.py) and the
NPU MoE notes "V4 sets swiglu_limit=10.0"; the config value itself is not in SGLang's sources.

What the CUDA kernel computes (the definition the oracle follows): the clamps in bf16 (`__hmin2` on the
gate only from above; `__hmax2`/`__hmin2` on up from both sides; 10 is exact in bf16), then in fp32
silu(g) = g / (1 + __expf(-g)) times u, one rounding to bf16. The gate is never clamped from below:
silu of a very negative gate is -0, not silu(-10).

Inputs, in the production layout:
  gate_up [T, 2 * inter] bf16, gate then up (MergedColumnParallelLinear [inter] * 2), contiguous
  inter = moe_intermediate_size * n_shared_experts / TP = 2048 / TP (the config's 2048 and 1 shared
  expert; the shared expert is tensor-parallel unless an all-to-all backend or SGLANG_SHARED_EXPERT_TP1
  makes it replicated)
Output: `y` [T, inter] bf16.

Input magnitudes: gate_up ~ N(0, 2^2) times a per-token scale 2^U(-2, 2), so some entries pass the
limit. Where the case asks ("beyond"), about one entry in 16 is replaced by one past the limit (|v| in
10..1e4, either sign, on gate and up), a few sit exactly at +-10 and just inside/outside it (9.9375,
10.0625), and a few are near bf16's limits (+-3e38, and 1e-38 subnormal-range values): a gate of -3e38
must give -0 (exp overflows to inf), +3e38 is clamped to 10. Infinities and NaN are left out: a GEMM
in bf16 gives neither unless the model has already diverged.
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Path, case_maker, import_module

OP = "silu_and_mul_clamp"
# fp32 arithmetic on bf16 inputs, one bf16 rounding of the output: bf16's ceilings, but for calc_diff.
# Round to nearest measures ~1e-6 (SGLang's torch reference rounds twice, ~1-2e-6); under Triton's
# interpreter (the CPU runs of the ROCm kernel) the fp32 -> bf16 store truncates, which measures
# 0.7-1.1e-5 on these outputs, at the bf16 default of 1e-5. 2e-5 holds that and still flags every
# fault a clamp, a limit or the halves can have (calc_diff >= 1e-3, tests/test_op_silu_and_mul_clamp.py).
DTYPE = "bf16"
CEILINGS = {"calc_diff": 2e-5}
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
LIMIT = 10.0
INTER = 2048  # moe_intermediate_size (srt/configs/deepseek_v4.py) x n_shared_experts (1)


_case = case_maker(I=INTER, beyond=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t3_tp1", {"tiny"}, T=3),
        _case("tiny_t16_tp8", {"tiny"}, T=16, I=INTER // 8),
        _case("tiny_t5_tp4_plain", {"tiny"}, T=5, I=INTER // 4, beyond=False),
    ]
    # decode batches and prefill chunks at TP1/2/4/8
    for tp in (1, 2, 4, 8):
        for t in (1, 8, 64, 512, 2048, 8192):
            out.append(_case(f"{'b' if t <= 64 else 't'}{t}_tp{tp}", {"flash"}, T=t, I=INTER // tp))
    out.append(_case("t4096_tp1_plain", {"flash"}, T=4096, beyond=False))
    return out


# ---------------------------------------------------------------------------------------------- inputs

# values at and around the limit, and near bf16's range ends (see the module docstring)
SPECIAL = (10.0, -10.0, 9.9375, -9.9375, 10.0625, -10.0625, 3.0e38, -3.0e38, 1.0e-38, -1.0e-38)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, inter = p["T"], p["I"]
    token = torch.pow(2.0, torch.rand(T, 1, generator=gen) * 4 - 2)
    x = torch.randn(T, 2 * inter, generator=gen) * 2.0 * token
    if p["beyond"]:
        far = torch.rand(T, 2 * inter, generator=gen) < 1 / 16
        mag = torch.pow(10.0, 1 + 3 * torch.rand(T, 2 * inter, generator=gen))  # 10 .. 1e4
        sign = torch.where(torch.rand(T, 2 * inter, generator=gen) < 0.5, -1.0, 1.0)
        x = torch.where(far, mag * sign, x)
        special = torch.tensor(SPECIAL)
        n = special.numel()
        for row in range(T):  # the specials on the gate of one column and the up of another, per row
            cols = torch.randint(0, inter, (2, n), generator=gen)
            x[row, cols[0]] = special
            x[row, inter + cols[1]] = special.flip(0)
    return {"gate_up": x.to(torch.bfloat16).contiguous()}


def cost(case: Case) -> tuple[float, float]:
    """gate_up read and y written in bf16; about 6 operations per output (2 clamps, exp, add, div, mul)."""
    T, inter = case.params["T"], case.params["I"]
    return float(T * 2 * inter * 2 + T * inter * 2), float(6.0 * T * inter)


# ---------------------------------------------------------------------------------------------- oracle


def clamped_swiglu_f64(gate_up: torch.Tensor, limit: float) -> torch.Tensor:
    x = gate_up.double()
    inter = x.shape[-1] // 2
    g = torch.minimum(x[..., :inter], torch.tensor(limit, dtype=torch.float64, device=x.device))
    u = x[..., inter:].clamp(-limit, limit)
    # g * sigmoid(g) written as g / (1 + exp(-g)): exact for a very negative g (exp -> inf, result -0)
    return g / (1.0 + torch.exp(-g)) * u


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    return {"y": clamped_swiglu_f64(t["gate_up"], LIMIT)}


# ---------------------------------------------------------------------------------------------- paths


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.kernels.ops.activation.silu_and_mul_clamp")
    gate_up = t["gate_up"]
    y = gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))
    mod.silu_and_mul_clamp(gate_up, y, LIMIT)
    return {"y": y}


def _timed(t: dict, case: Case):
    mod = import_module("sglang.kernels.ops.activation.silu_and_mul_clamp")
    gate_up = t["gate_up"]
    y = gate_up.new_empty((gate_up.shape[0], gate_up.shape[1] // 2))
    return lambda: mod.silu_and_mul_clamp(gate_up, y, LIMIT)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`expert_pack._clamped_swiglu`'s torch branch (bf16 clamps, F.silu, product). On a CUDA tensor the
    function calls the JIT kernel instead, so it is given CPU tensors: this path is always the
    reference."""
    mod = import_module("sglang.srt.layers.quantization.expert_pack")
    gate_up = t["gate_up"]
    inter = gate_up.shape[1] // 2
    cpu = gate_up.cpu()
    return {"y": mod._clamped_swiglu(cpu[:, :inter], cpu[:, inter:], LIMIT).to(gate_up.device)}


def sglang_triton_rocm(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`silu_and_mul_clamp_triton`, the ROCm build of the same op (DeepseekV2MLP on HIP), plain bf16 output;
    `module` is a copy of its file (tests/ops/planted_silu_and_mul_clamp.py)."""
    mod = module or import_module("sglang.kernels.ops.activation.silu_and_mul_clamp_hip")
    return {"y": mod.silu_and_mul_clamp_triton(t["gate_up"], LIMIT)}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition in silu_and_mul_masked_post_quant.cuh"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        timed=_timed,
        note="kernels/ops/activation/silu_and_mul_clamp.py, the JIT CUDA kernel DeepseekV2MLP runs on SM120",
    ),
    Path("sglang.torch", sglang_torch, note="srt/layers/quantization/expert_pack.py _clamped_swiglu, torch branch"),
    Path(
        "sglang.triton_rocm",
        sglang_triton_rocm,
        note="kernels/ops/activation/silu_and_mul_clamp_hip.py silu_and_mul_clamp_triton, the ROCm path",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.activation.silu_and_mul_clamp:silu_and_mul_clamp": (
        "fp16 inputs (DeepSeek-V4 runs bf16); the routed experts' calls (DeepGemmRunnerCore, fused_moe) at their shapes"
    ),
}

"""The [32, 32]-block FP8 GEMM op with SGLang's real Triton GEMM fed the bugs a block-32 UE8M0 route can
really have: the activation quantizer rounding the UE8M0 exponent to nearest instead of up (the JIT
kernel's `fast_log2_ceil` replaced by a round), and a group of 128 used on 32-blocks inside SGLang's own
kernel file (one-line edits of `_w8a8_block_fp8_matmul`: the K scale pointers stepping once per 128 of K,
the weight-scale row taken per 128 output columns). A control path quantizes with the ceil rounding the
same way, so the nearest-rounding path differs from it by that one rounding only. Each fault must be
flagged; the clean kernel and the control must not be."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "fp8_block32_gemm.py")
OP = "planted_fp8_block32_gemm"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
OUTPUTS = _real.OUTPUTS
make_inputs, metrics, cost = _real.make_inputs, _real.metrics, _real.cost
BLOCK = _real.BLOCK

# the standard kernel's scale set-up (fp8_kernel.py:_w8a8_block_fp8_matmul), unique in the file
_SETUP = (
    "    offs_bsn = offs_bn // group_n\n"
    "    Bs_ptrs = Bs + offs_bsn * stride_Bs_n\n"
    "    n_tiles_k_per_group_k = group_k // BLOCK_SIZE_K\n\n"
    "    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)\n"
    "    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):\n"
    "        if needs_masking:"
)
K_STEP_128 = (_SETUP, _SETUP.replace("group_k // BLOCK_SIZE_K", "128 // BLOCK_SIZE_K"))
N_GROUP_128 = (_SETUP, _SETUP.replace("offs_bn // group_n", "offs_bn // 128"))


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def ue8m0_quantize(x: torch.Tensor, group: int, rounding: str = "ceil") -> tuple[torch.Tensor, torch.Tensor]:
    """Per token and `group`, as SGLang's JIT `per_token_group_quant_8bit_v2` quantizes with UE8M0: the
    fp32 product amax * fp32(1/448), its exponent rounded up from the float's bits (`fast_log2_ceil`), or
    to the nearest power of two (`rounding="nearest"`, the fault); q = x * 2^-e saturated to +-448."""
    M, K = x.shape
    g = x.float().view(M, K // group, group)
    ratio = g.abs().amax(-1).clamp(min=1e-10) * torch.tensor(1.0 / _real.FP8_MAX, dtype=torch.float32)
    bits = ratio.view(torch.int32)
    if rounding == "ceil":
        e = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).int()
    elif rounding == "nearest":
        e = torch.round(torch.log2(ratio.double())).int()
    else:
        raise ValueError(rounding)
    scale = torch.pow(2.0, e.float())
    q = (g * torch.pow(2.0, -e.float())[..., None]).clamp(-_real.FP8_MAX, _real.FP8_MAX)
    return q.view(M, K).to(torch.float8_e4m3fn), scale


def _from_bf16(t: dict, case, rounding: str) -> dict:
    _real._need_k_aligned(case)
    a, a_scale = ue8m0_quantize(t["x"], BLOCK, rounding)
    return _real.sglang_triton({**t, "a": a, "a_scale": a_scale}, case)


def control_ue8m0_ceil(t, case):
    """The quantizer above with SGLang's ceil rounding, then SGLang's GEMM: must pass."""
    return _from_bf16(t, case, "ceil")


def ue8m0_nearest(t, case):
    """The UE8M0 exponent rounded to nearest: groups whose amax is under 448/sqrt(2) times their power of
    two get half the scale and saturate their largest values."""
    return _from_bf16(t, case, "nearest")


def k_scale_step_128(t, case):
    """The GEMM's activation and weight scale pointers step once per 128 of K (a hard-coded group of
    128): K groups 1-3 of every 4 use the scales of the group before them."""
    return _real.sglang_triton(t, case, edit=K_STEP_128)


def n_scale_group_128(t, case):
    """The weight-scale row taken per 128 output columns (`offs_bn // 128`): columns 32-127 of every 128
    use the first 32-block's scales."""
    return _real.sglang_triton(t, case, edit=N_GROUP_128)


# every real path (the GPU ones skip here with their reason), the control, then the faults
PATHS = list(_real.PATHS) + [
    Path("control.ue8m0_ceil", control_ue8m0_ceil),
    Path("planted.ue8m0_nearest", ue8m0_nearest),
    Path("planted.k_scale_step_128", k_scale_step_128),
    Path("planted.n_scale_group_128", n_scale_group_128),
]

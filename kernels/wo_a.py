"""DeepSeek-V4 attention output, first half: wo_a, the grouped low-rank projection of the attention
output (after its inverse RoPE) to o_lora_rank per group,

    y[t, g, r] = sum_d o[t, g, d] * W[g, r, d],    W = dequant(wo_a.weight fp8, wo_a.scale e8m0)

with G = o_groups / TP = 8 / TP groups (8 at TP1, 4 at TP2, 2 at TP4, 1 at TP8), D = 64 heads x 512 /
8 groups = 4096 per group, R = o_lora_rank = 1024 (srt/configs/deepseek_v4.py; MQALayer.__init__ builds
wo_a as ColumnParallelLinear(n_heads * head_dim // n_groups, n_groups * o_lora_rank)).

How SM120 runs it for V4 (srt/models/deepseek_v4.py):
  - at load: `handle_model_specific_adjustments` (srt/arg_groups/model_hook.py) sets
    SGLANG_OPT_FP8_WO_A_GEMM False on SM120 unless the user set it, so `wo_a_fp8_gemm_enabled` is False,
    wo_a is a BF16 parameter, and `load_weights` streams the checkpoint through
    `_prepare_deepseek_v4_weights` -> `_dequant_fp8_wo_a_streaming`, which pairs `.wo_a.weight`
    (float8_e4m3fn) with `.wo_a.scale` (float8_e8m0fnu, one per 128 x 128 block) and yields
    `_dequant_fp8(weight, scale)`: fp32 product, one rounding to bf16. The weight loader then keeps this
    rank's rows (ColumnParallelLinear). The op's input is that rank's rows of the checkpoint tensors:
    the rows split on whole 128-row blocks, so dequantizing them alone gives the same bytes.
  - per forward (`MQALayer.forward`): `o = o[:, tp_slice, :]`, fused_rope_inplace(inverse=True) on its
    last 64 dims (another op's), `o = o.view(T, G, -1)`, then `_apply_wo_a_bf16_matmul(o, wo_a,
    is_decode=..., fast_path=self.is_dsv41)`. For V4 fast_path is False, and on CUDA neither the aiter
    reroute nor the HIP branches apply, so it returns `torch.einsum("tgd,grd->tgr", o, wo_a)` (cuBLAS).
    The fused rope + wo_a kernel needs capability major 10 and V4.1 (`use_fused_wo_a`).
  - `_wo_a_bf16_bmm_token_major` (strided torch.bmm into the token-major output) is reached only with
    fast_path (V4.1 and the DSpark draft's target verify); it is the same contraction and is run here
    as a path of its own on V4's shapes.

Inputs, in the production layout:
  o_attn     [T, Hk, 512] bf16: the attention output as the backend returns it; the rank's 8 * G heads
             first. At TP > 1 on SM120 a decode batch (T <= SM120_DECODE_MAX_TOKENS = 64) runs the
             FlashMLA kernel at 64 padded heads (`_kernel_num_heads`), so Hk = 64 and o is a strided view
             (row stride 64 x 512); the padding is `new_empty` there: here NaN, which no path may read
  wo_a_fp8   [G * 1024, 4096] float8_e4m3fn, wo_a_scale [G * 8, 32] float8_e8m0fnu
Output: `y` [T, G, 1024] bf16.

Input magnitudes: o ~ N(0, 1) times a per-token scale 2^U(-1, 1) (an average of RMS-normalised values),
one row of zeros where T >= 3 (a padding token). W ~ N(0, 1/4096) times a per-block 2^U(-2, 2), quantized
as a block-FP8 checkpoint is: each block's power-of-two scale the smallest that keeps it within 448, so
small entries fall to e4m3's subnormals; one block all zero.
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Path, case_maker, dsv4, import_module

OP = "wo_a"
# bf16 operands (the dequantized weight is exact in bf16: e4m3 times a power of two), fp32 accumulation,
# one bf16 rounding of the output: bf16's ceilings apply.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
HEAD_DIM = 512
HEADS_PER_GROUP = 8  # 64 heads / 8 groups
D = HEADS_PER_GROUP * HEAD_DIM  # 4096
R = 1024  # o_lora_rank
BLOCK = 128  # the checkpoint's FP8 block (V4: 128 x 128)
PADDED_HEADS = 64  # FlashMLA's head count for a TP > 1 decode batch on SM120
DECODE_MAX = 64  # SM120_DECODE_MAX_TOKENS


_case = case_maker(mode="prefill", padded=False)


def cases() -> list[Case]:
    out = [
        _case("tiny_t2_tp1", {"tiny"}, T=2, G=8, mode="decode"),
        # TP8 decode: 8 heads in FlashMLA's 64-head output, the other 56 NaN
        _case("tiny_t3_tp8_padded", {"tiny"}, T=3, G=1, mode="decode", padded=True),
        _case("tiny_t5_tp4", {"tiny"}, T=5, G=2),
    ]
    for tp in (1, 2, 4, 8):
        G = 8 // tp
        for t in (1, 8, 64, 512, 2048, 8192):
            decode = t <= DECODE_MAX
            name = f"{'b' if decode else 't'}{t}_tp{tp}{'_padded' if decode and tp > 1 else ''}"
            out.append(
                _case(
                    name,
                    {"flash", f"tp{tp}"} if tp >= 4 else {"flash"},
                    T=t,
                    G=G,
                    mode="decode" if decode else "prefill",
                    padded=decode and tp > 1,
                )
            )
    return out


# ---------------------------------------------------------------------------------------------- inputs


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (e4m3 [N, K], e8m0 [N / 128, K / 128]): per 128 x 128 block the smallest power of
    two scale that keeps the block within e4m3's 448 (an all-zero block gets 2^-127)."""
    n, k = w.shape
    blocks = w.double().reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    amax = blocks.abs().amax((1, 3))
    exp = torch.where(amax > 0, torch.ceil(torch.log2(amax.clamp(min=1e-300) / dsv4.FP8_MAX)), -127.0).clamp(-127, 127)
    q = (blocks / torch.pow(2.0, exp)[:, None, :, None]).to(torch.float8_e4m3fn).reshape(n, k)
    return q, (exp + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, G = p["T"], p["G"]
    heads = HEADS_PER_GROUP * G
    hk = PADDED_HEADS if p["padded"] else heads
    o = torch.full((T, hk, HEAD_DIM), float("nan"))
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    o[:, :heads] = torch.randn(T, heads, HEAD_DIM, generator=gen) * token
    if T >= 3:
        o[T // 2, :heads] = 0.0  # a padding token
    spread = torch.pow(2.0, torch.rand(G * R // BLOCK, 1, D // BLOCK, 1, generator=gen) * 4 - 2)
    w = torch.randn(G * R // BLOCK, BLOCK, D // BLOCK, BLOCK, generator=gen) * spread / D**0.5
    w[0, :, -1, :] = 0.0  # an all-zero block
    w8, scale = quantize_blocks(w.reshape(G * R, D))
    return {"o_attn": o.to(torch.bfloat16).contiguous(), "wo_a_fp8": w8.contiguous(), "wo_a_scale": scale.contiguous()}


def cost(case: Case) -> tuple[float, float]:
    """Per forward: o read, the bf16 weight (dequantized at load) read once, y written; the GEMM."""
    T, G = case.params["T"], case.params["G"]
    return float(T * G * D * 2 + G * R * D * 2 + T * G * R * 2), float(2.0 * T * G * R * D)


# ---------------------------------------------------------------------------------------------- oracle


def dequant_f64(w8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The checkpoint's block-FP8 weight in float64: e4m3 value times 2^(byte - 127) of its block."""
    s = dsv4.pow2(scale.view(torch.uint8).long() - 127)
    s = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return w8.double() * s


def _o(t: dict, case: Case) -> torch.Tensor:
    """The rank's heads of the attention output, viewed [T, G, D] as MQALayer.forward views them."""
    T, G = case.params["T"], case.params["G"]
    return t["o_attn"][:, : HEADS_PER_GROUP * G, :].view(T, G, -1)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    w = dequant_f64(t["wo_a_fp8"], t["wo_a_scale"]).view(case.params["G"], R, D)
    return {"y": torch.einsum("tgd,grd->tgr", _o(t, case).double(), w).contiguous()}


# ---------------------------------------------------------------------------------------------- paths


def _model():
    return import_module("sglang.srt.models.deepseek_v4")


def load_weight(t: dict, case: Case) -> torch.Tensor:
    """The load hook: `_dequant_fp8` (what `_dequant_fp8_wo_a_streaming` yields), viewed [G, R, D] as
    MQALayer.forward views `self.wo_a.weight`."""
    w = _model()._dequant_fp8(t["wo_a_fp8"], t["wo_a_scale"])
    return w.view(case.params["G"], R, -1)


def _einsum_call(t: dict, case: Case):
    m, wo_a, o = _model(), load_weight(t, case), _o(t, case)
    decode = case.params["mode"] == "decode"
    return lambda: m._apply_wo_a_bf16_matmul(o, wo_a, is_decode=decode, is_prefill=not decode, fast_path=False)


def _bmm_call(t: dict, case: Case):
    m, wo_a, o = _model(), load_weight(t, case), _o(t, case)
    return lambda: m._wo_a_bf16_bmm_token_major(o, wo_a)


# the engine stores outputs as safetensors, which takes only contiguous tensors; einsum returns a permuted
# view, and wo_b reads either layout through o.flatten(1), so the layout is not part of what is compared
def sglang_einsum(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"y": _einsum_call(t, case)().contiguous()}


def sglang_bmm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"y": _bmm_call(t, case)().contiguous()}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the checkpoint's block-FP8 definition"),
    Path(
        "sglang.einsum",
        sglang_einsum,
        timed=_einsum_call,
        note="_dequant_fp8 at load, then _apply_wo_a_bf16_matmul(fast_path=False): V4's einsum (cuBLAS)",
    ),
    Path(
        "sglang.bmm",
        sglang_bmm,
        timed=_bmm_call,
        note="_dequant_fp8 at load, then _wo_a_bf16_bmm_token_major (V4.1 / DSpark verify's bmm) on V4 shapes",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.models.deepseek_v4:_apply_wo_a_bf16_matmul": (
        "the V4.1 fast paths (fast_path=True: gemv / small batch, row 2), target verify, the HIP and aiter branches"
    ),
    "sglang.srt.models.deepseek_v4:_wo_a_bf16_bmm_token_major": "V4.1's G = 2 shape (row 2)",
}

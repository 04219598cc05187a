"""DeepSeek-V4.1-Flash's dense FP8 GEMMs with [32, 32] weight blocks and UE8M0 activation scales: what
SGLang runs on SM120 for every FP8 linear of a V4.1 checkpoint (inventory row 28).

The checkpoint: `quant_method: fp8, weight_block_size: [32, 32], scale_fmt: ue8m0` (the V4.1 override in
srt/arg_groups/model_overrides/deepseek_v4.py:28-40 tests exactly these and, on SM100 only, moves them to
FlashInfer's MXFP8 GEMMs). `Fp8LinearMethod.__init__` (srt/layers/quantization/fp8.py:548-552) binds
`dispatch_w8a8_block_fp8_linear([32, 32], act_scale_ue8m0=(scale_fmt == "ue8m0"))`.

How SM120 selects it (srt/layers/quantization/fp8_utils.py):
  - `initialize_fp8_gemm_config` turns `--fp8-gemm-backend auto` into `cutlass` on SM120 (:1207-1220);
  - `dispatch_w8a8_block_fp8_linear` (:704-750): the native block-32 DeepGEMM branch needs SM90 (auto or
    deep_gemm) or SM100 (deep_gemm and UE8M0); SM120 is neither, so `block[1] != 128` returns
    `partial(triton_w8a8_block_fp8_linear, act_scale_ue8m0=True)`, whatever the backend;
  - `can_serve_block_fp8_as_mxfp8` (:921-930) needs an explicit flashinfer_cutlass / flashinfer_cutedsl
    backend (`resolve_block_fp8_mxfp8_backend`, :900-918): not with the SM120 default;
  - `triton_w8a8_block_fp8_linear` (:1780-1839) with act_scale_ue8m0 quantizes the bf16 activations with
    `sglang_per_token_group_quant_fp8(x, 32, scale_ue8m0=True)`: row-major fp32 scales that are powers
    of two, which `_run_per_token_group_quant_8bit_kernel` (kernels/ops/quantization/fp8_kernel.py:435-452)
    sends to the JIT CUDA kernel `per_token_group_quant_8bit_v2` (group 32 is one of its 16/32/64/128):
    scale = 2^ceil(log2(fp32(amax * fp32(1/448)))) by the exponent bits (`fast_log2_ceil`,
    jit/csrc/gemm/per_token_group_quant_8bit_v2.cuh:69-100), q = sat_e4m3(x * 2^-e). It then runs
    `w8a8_block_fp8_matmul_triton(q, weight, scale, weight_scale_inv, [32, 32], bf16)`
    (kernels/ops/gemm/fp8_kernel.py:776-880). The `weight_bf16` branch (F.linear over a BF16 weight copy)
    needs `_block_fp8_bf16_weight`, which only SM90 builds (fp8.py, SGLANG_OPT_HOPPER_BLOCK_FP8_BF16).
  - The GEMM's launch config: SGLang 0.5.23 ships [32, 32] tuned files for NVIDIA_H200 only (N=1792/1152/
    576/4096/8192/25600, K=5120/1280/6144, N=5120 K=2048/1024/576/288), all SWAP_AB/SPLIT_K Hopper
    configs that `w8a8_block_fp8_matmul_triton` uses only when `is_sm90`; on an RTX PRO 6000 no file
    matches and the default runs: BLOCK_SIZE_M 64, BLOCK_SIZE_N 32, BLOCK_SIZE_K 32 (= the block),
    GROUP_SIZE_M 32, 4 warps, 3 stages. Asked here with the RTX PRO 6000's device name (fp8_block_gemm's
    `_gemm_module`). On a GPU host the config is the host's own (an H200 runs its tuned Hopper kernel).

SM90, for comparison: with DeepGEMM enabled the dispatcher's first branch picks
`deepgemm_w8a8_block_fp8_linear_with_fallback(act_scale_ue8m0=True)`: the same UE8M0 quantizer, then
DeepGEMM's native block-32 GEMM (`fp8_gemm_nt(..., recipe=(1, 32, 32))`) where N % 8 == 0 and
K % 32 == 0, else the Triton route above. So DeepGEMM is used for [32, 32] blocks, on SM90 (and SM100 on
request), never on SM120. Path `sglang.sm90.dispatch` runs what the dispatcher returns on an SM90 host.

Two entry points, as separate paths (as fp8_block_gemm):
  sglang.triton          the GEMM alone, from the pre-quantized activations and their scales
  sglang.triton.linear   from bf16 through SGLang's UE8M0 block-32 quantizer (JIT CUDA: a GPU only)

Inputs, in the production layout:
  x                 [M, K] bf16, the layer input
  a, a_scale        [M, K] e4m3 and [M, ceil(K/32)] fp32 row-major, powers of two: x quantized per
                    token and 32-group
  weight            [N, K] e4m3 (nn.Linear layout)
  weight_scale_inv  [ceil(N/32), ceil(K/32)] fp32, powers of two (the checkpoint's ue8m0 scales)

x is built exactly quantizable under UE8M0 with ceil rounding: each (token, 32-group) is e4m3 values whose
largest magnitude `top` is an e4m3 value in (224, 448] (240, 256, 288, ..., 448), times a power of two 2^e.
amax/448 then lies in (2^(e-1), 2^e], ceil gives back 2^e exactly and x * 2^-e gives back `a`: the drift
left is fp32 accumulation and the bf16 output (DTYPE bf16). Every token has at least one group with
top < 448 / sqrt(2) (240, 256 or 288), where a quantizer rounding the exponent to nearest picks 2^(e-1)
and saturates the group's largest values (tests/ops/planted_fp8_block32_gemm.py); with top = 448 only
(as fp8_block_gemm builds its inputs) the two roundings agree. Token scales 2^-14..2^6 with one outlier
token 2^12 above the median one (massive activations), weight block scales 2^-14..2^-10.

Output: `out` [M, N] bf16. Metric beyond the standard drift: `worst_tile_calc_diff`, per token and 32
output columns (the columns one weight-scale row covers).

V4.1-Flash shapes (K, N). From the sources: hidden 5120 (the H200 [32, 32] file names; research notes),
q_lora 1280 (`_normalize_q_lora` tests q.shape[1] == 1280, deepseek_v4.py:1750), head_dim 512, 64 heads,
o_groups 8 x o_lora 1024 (wo_a is [G * 1024, 4096], deepseek_v4.py:1540), wqkv_a = q_lora + head_dim
(deepseek_v4.py:1094-1101), wq_b q_lora -> heads * 512, wo_b o_groups * o_lora -> hidden
(deepseek_v4.py:1118-1164), the V4.1 indexer's wq_b q_lora -> index heads * index dim, replicated
(dsv41_sparse.py:209-215), Engram's wkv -> hidden * (hc_mult + 1) = 25600 (engram.py:1321-1328).
Assumed (no config in the sources): index heads 32 x dim 128 (research notes; = the H200 file N=4096,
K=1280); Engram's K = 6144 and the shared expert's intermediate 2304 (read off the H200 tuned-file names:
N=25600 K=6144; gate_up N=1152 / down K=576 at TP4, N=576 / K=288 at TP8).
"""

from __future__ import annotations

import math

import torch

from harness.parity.op import (
    ORACLE,
    SM90,
    Case,
    Metric,
    Path,
    Unavailable,
    case_maker,
    deepgemm,
    import_module,
    sibling,
)

OP = "fp8_block32_gemm"
# Exactly quantizable inputs (see above): fp32 accumulation and one bf16 rounding are all the drift. Under
# Triton's interpreter the bf16 cast truncates (calc_diff ~5e-6); the bf16 ceiling holds either way.
DTYPE = "bf16"
PRIMARY = "out"
OUTPUTS = {"out": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
# per 32-column tile: a bf16 rounding is at most 2^-8 relative (2^-7 truncated), so a clean tile stays
# under ~3e-5 whatever its values; 5x the global ceiling, as worst_row_calc_diff
CEILINGS = {"worst_tile_calc_diff": 5e-5}
BLOCK = 32
FP8_MAX = 448.0
# e4m3 values in (224, 448]: a group whose largest magnitude is one of them quantizes exactly under UE8M0
TOPS = (240.0, 256.0, 288.0, 320.0, 352.0, 384.0, 416.0, 448.0)
N_BELOW_SQRT2 = 3  # TOPS[:3] are below 448 / sqrt(2) = 316.8: round-to-nearest and ceil disagree there

# name -> (K, N) at TP1 and how TP splits it: "n" column-parallel, "k" row-parallel, None replicated
SHAPES = {
    "wqkv_a": (5120, 1792, None),  # wq_a and wkv fused, the default (SGLANG_OPT_FUSE_WQA_WKV)
    "wq_a": (5120, 1280, None),  # unfused
    "wkv": (5120, 512, None),
    "index_wq_b": (1280, 4096, None),  # 32 index heads x 128 (assumed)
    "engram_wkv": (6144, 25600, None),  # layers 1 and 14 only; K assumed
    "wq_b": (1280, 32768, "n"),
    "wo_b": (8192, 5120, "k"),
    "shared_gate_up": (5120, 4608, "n"),  # intermediate 2304 assumed
    "shared_down": (2304, 5120, "k"),
}
TPS = (1, 2, 4, 8)
MS = (1, 8, 64, 512, 4096)
FEWER_MS = {"wq_a": (1, 64, 512), "wkv": (1, 64, 512)}  # the unfused pair: a few
TP2_MS = (1, 8, 512)
MAX_OUTPUT = 1 << 24  # M*N cap: the fp64 oracle's output and the drift metrics stay ~100 MB

_fp8 = sibling(__file__, "fp8_block_gemm")  # its tuned-config lookup and guarded launch
_case = case_maker()  # _case(name, tags, M=, K=, N=)


def cases() -> list[Case]:
    out = [
        # K 5 groups, N 3 blocks: neither a multiple of 64 or 128
        _case("tiny_m3_k160_n96", {"tiny"}, M=3, K=160, N=96),
        # N tail: 200 = 6 x 32 + 8 (the last weight-scale row covers 8 columns)
        _case("tiny_m1_k224_n200", {"tiny"}, M=1, K=224, N=200),
        # K tail: 176 = 5 x 32 + 16, only the pre-quantized GEMM takes it (the quantizer asserts K % 32)
        _case("tiny_m4_k176_n160", {"tiny"}, M=4, K=176, N=160),
        # one row past the default config's 64-row M tile, and an N tail
        _case("tiny_m65_k96_n72", {"tiny"}, M=65, K=96, N=72),
    ]
    # m<M>_tp<T>_<shape>: per-rank shapes at each TP; replicated ones are the same at every TP (tp1)
    for shape, (K, N, split) in SHAPES.items():
        for tp in TPS if split else (1,):
            k, n = (K // tp, N) if split == "k" else (K, N // tp) if split == "n" else (K, N)
            ms = FEWER_MS.get(shape, TP2_MS if tp == 2 else MS)
            tags = {"flash"} | ({f"tp{tp}"} if tp > 1 else set())
            for M in ms:
                if M * n <= MAX_OUTPUT:
                    out.append(_case(f"m{M}_tp{tp}_{shape}", tags, M=M, K=k, N=n))
    return out


def cost(case: Case) -> tuple[float, float]:
    """The least a GEMM must move: fp8 A and B once, their fp32 scales, the bf16 output; 2MNK flops."""
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    kb, nb = math.ceil(K / BLOCK), math.ceil(N / BLOCK)
    nbytes = M * K + N * K + 4 * (M * kb + nb * kb) + 2 * M * N
    return float(nbytes), 2.0 * M * N * K


# ---------------------------------------------------------------------------------------------- inputs


def _e4m3_blocks(g: torch.Tensor, rows: int, top: torch.Tensor) -> torch.Tensor:
    """Each [rows x 32] block of g scaled so its largest magnitude is exactly top[block] (an e4m3 value),
    rounded to e4m3: no element rounds above it. Tail blocks count their own elements only."""
    R, C = g.shape
    Rp, Cp = math.ceil(R / rows) * rows, math.ceil(C / BLOCK) * BLOCK
    blocks = _fp8._pad_to(g, Rp, Cp).view(Rp // rows, rows, Cp // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    q = (blocks / amax * top[:, None, :, None]).view(Rp, Cp)[:R, :C]
    return q.to(torch.float8_e4m3fn)


def expand(scale: torch.Tensor, rows: int, R: int, C: int) -> torch.Tensor:
    """Per-block scale [ceil(R/rows), ceil(C/32)] -> per element [R, C]."""
    return _fp8.expand(scale, rows, R, C, BLOCK)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    kb, nb = math.ceil(K / BLOCK), math.ceil(N / BLOCK)
    tops = torch.tensor(TOPS)
    # each (token, group) its own top; one group of every token below 448/sqrt(2) (where rounding matters)
    top_idx = torch.randint(0, len(TOPS), (M, kb), generator=gen)
    below = torch.randint(0, N_BELOW_SQRT2, (M,), generator=gen)
    top_idx[torch.arange(M), torch.randint(0, kb, (M,), generator=gen)] = below
    a = _e4m3_blocks(torch.randn(M, K, generator=gen), 1, tops[top_idx])
    # a power of two per token (2^-12..2^-4, one outlier token at 2^4) times one per group (2^-2..2^2)
    token_exp = torch.randint(-12, -3, (M, 1), generator=gen)
    if M > 1:
        token_exp[torch.randint(0, M, (1,), generator=gen)] = 4
    a_scale = torch.pow(2.0, (token_exp + torch.randint(-2, 3, (M, kb), generator=gen)).float())
    x = (a.float() * expand(a_scale, 1, M, K)).to(torch.bfloat16)
    # weights as a checkpoint holds them: any e4m3 block, block scales 2^-14..2^-10
    w_top = tops[torch.randint(0, len(TOPS), (nb, kb), generator=gen)]
    weight = _e4m3_blocks(torch.randn(N, K, generator=gen), BLOCK, w_top)
    weight_scale = torch.pow(2.0, torch.randint(-14, -9, (nb, kb), generator=gen).float())
    # the premise of the DTYPE: x is exactly a * a_scale (fp32 holds both sides exactly)
    assert torch.equal(x.float(), a.float() * expand(a_scale, 1, M, K))
    return {"x": x, "a": a, "a_scale": a_scale, "weight": weight, "weight_scale_inv": weight_scale}


# ---------------------------------------------------------------------------------------------- oracle


def dequantize(t: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact float64 values of the activation and the weight (32 x 32 weight blocks)."""
    return _fp8.dequantize(t, BLOCK)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 product of the exactly dequantized operands."""
    a, w = dequantize(t)
    return {"out": a @ w.T}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """calc_diff of each tile of one token by 32 output columns (one weight-scale row), the worst with
    where it is: a fault confined to one weight block or one token's group stands out there."""
    return [_fp8.worst_tile(outputs["out"], oracle_out["out"], BLOCK)]


# ---------------------------------------------------------------------------------------------- paths


def _need_k_aligned(case: Case) -> None:
    if case.params["K"] % BLOCK:
        raise Unavailable(f"K={case.params['K']} is not a multiple of 32: SGLang's activation quantizer asserts it")


def sglang_triton(t: dict, case: Case | None, edit: tuple[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The GEMM alone, from the pre-quantized activations, with the config SGLang picks on the device
    (`edit`: a copy of SGLang's kernel file with one edit, for a planted fault)."""
    mod = _fp8._gemm_module(edit)
    with _fp8._launch(mod, None) as allocs:
        out = mod.w8a8_block_fp8_matmul_triton(
            t["a"], t["weight"], t["a_scale"], t["weight_scale_inv"], [BLOCK, BLOCK], output_dtype=torch.bfloat16
        )
    return {"out": out, **allocs.result()}


def sglang_triton_linear(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """What SM120's dispatcher returns for this checkpoint: the UE8M0 block-32 quantizer, then the GEMM."""
    _need_k_aligned(case)
    mod = _fp8._gemm_module()
    utils = import_module("sglang.srt.layers.quantization.fp8_utils")
    with _fp8._launch(mod, None) as allocs:
        out = utils.triton_w8a8_block_fp8_linear(
            t["x"], t["weight"], [BLOCK, BLOCK], t["weight_scale_inv"], act_scale_ue8m0=True
        )
    return {"out": out, **allocs.result()}


def sglang_sm90_dispatch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """What `dispatch_w8a8_block_fp8_linear([32, 32], act_scale_ue8m0=True)` returns on this SM90 host,
    called as Fp8LinearMethod.apply calls it: DeepGEMM's native block-32 GEMM where SGLang takes it."""
    _need_k_aligned(case)
    if case.params["N"] % 8:
        raise Unavailable(
            f"N={case.params['N']}: DeepGEMM's block-32 GEMM takes N % 8 == 0, SGLang falls back to Triton"
        )
    deepgemm.load()  # a deep_gemm this torch cannot run is a skip with its reason
    utils = import_module("sglang.srt.layers.quantization.fp8_utils")
    linear = utils.dispatch_w8a8_block_fp8_linear(weight_block_size=[BLOCK, BLOCK], act_scale_ue8m0=True)
    picked = getattr(linear, "func", linear)
    if picked is not utils.deepgemm_w8a8_block_fp8_linear_with_fallback:
        raise Unavailable(f"SGLang picks {picked.__name__} on this host (DeepGEMM off): that is sglang.triton.linear")
    out = linear(input=t["x"], weight=t["weight"], block_size=[BLOCK, BLOCK], weight_scale=t["weight_scale_inv"])
    return {"out": out}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 over the exactly dequantized operands"),
    Path("sglang.triton", sglang_triton, note="w8a8_block_fp8_matmul_triton, [32, 32], pre-quantized activations"),
    Path(
        "sglang.triton.linear",
        sglang_triton_linear,
        needs_cuda=True,
        note="triton_w8a8_block_fp8_linear(act_scale_ue8m0=True) from bf16: the JIT UE8M0 quantizer + the Triton GEMM",
    ),
    Path(
        "sglang.sm90.dispatch",
        sglang_sm90_dispatch,
        archs=SM90,
        note="SM90's pick: deepgemm_w8a8_block_fp8_linear_with_fallback (UE8M0 quantizer, DeepGEMM recipe 1x32x32)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.layers.quantization.fp8_utils:triton_w8a8_block_fp8_linear": (
        "[32, 32] blocks with UE8M0 activation scales; bias and the SM90-only weight_bf16 branch not cased"
    ),
}

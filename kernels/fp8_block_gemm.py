"""DeepSeek-V4-Flash's dense FP8 block-scaled GEMMs: the attention projections and the shared expert,
what SGLang runs on SM120 in place of DeepGEMM's `fp8_gemm_nt`.

Call site: `Fp8LinearMethod.apply` (`srt/layers/quantization/fp8.py`) calls the linear that
`dispatch_w8a8_block_fp8_linear` picked, `(input, weight, block_size=[128, 128], weight_scale)`.
On SM120 `--fp8-gemm-backend auto` means cutlass: `cutlass_w8a8_block_fp8_linear_with_fallback`
quantizes the bf16 activations per token and 128-group (`sglang_per_token_group_quant_fp8_row_padded`:
fp32 scales amax/448, rows padded to a multiple of 4, scales column-major) and runs the JIT CUTLASS
SM120 kernel `fp8_blockwise_scaled_mm(q, weight.T, q_scale, weight_scale.T, bf16)`; where N or K is
not a multiple of 128 it falls back to `triton_w8a8_block_fp8_linear`, which quantizes with
`per_token_group_quant_fp8` (row-major scales) and runs `w8a8_block_fp8_matmul_triton`.
`--fp8-gemm-backend triton` forces that path. A checkpoint with `scale_fmt: ue8m0` does not change
either for 128x128 blocks (act_scale_ue8m0 is bound only on the DeepGEMM and block-32 routes).

Two entry points per kernel, as separate paths:
  *.linear   from bf16 activations: the activation quantizer is part of the path (production)
  the other  from pre-quantized fp8 activations with their scales: the GEMM alone (SGLang's
             pre-quantized `input_scale` branch), so a drift is the kernel's and not the quantizer's

Inputs, in the production layout:
  x                 [M, K] bf16, the layer input
  a, a_scale        [M, K] e4m3 and [M, ceil(K/128)] fp32 row-major: x quantized per token and group
  weight            [N, K] e4m3 (nn.Linear layout)
  weight_scale_inv  [ceil(N/128), ceil(K/128)] fp32, powers of two (the checkpoint's ue8m0 scale_fmt)

x is built exactly quantizable: each (token, group) is e4m3 values whose largest magnitude is 448,
times a power of two, so amax/448 recovers the scale exactly and every quantizer (fp32 amax/448,
UE8M0 ceil) returns exactly `a` and `a_scale`. Both entry points then compute the same exact product,
and what is left is fp32 accumulation and the bf16 output: the bf16 ceiling applies (DTYPE). Token
scales span 2^-14..2^6, one outlier token 2^12 above the median one, as the massive activations
of LLM hidden states: e4m3's exponent range absorbs a per-tensor scale until a token sits ~2^12 below
the tensor's largest value, so only such a range catches a quantizer with one scale for the tensor.

Output: `out` [M, N] bf16. Metric beyond the standard drift: `worst_tile_calc_diff`, the calc_diff of
each tile of one token by 128 output columns (the columns one weight-scale row covers): a fault in one
weight block's scale or columns stands out there even at M 1 and N 32768, where it is 1/256 of a row.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import torch

from harness.parity.op import (
    ORACLE,
    SM120,
    Allocations,
    Case,
    Metric,
    Path,
    Unavailable,
    case_maker,
    deepgemm,
    function,
    import_module,
    interpreted,
    load_by_path,
)

OP = "fp8_block_gemm"
# Exactly quantizable inputs (see above): bf16 output rounding and fp32 accumulation are all the
# drift. Rounding the oracle to bf16 gives calc_diff ~1.4e-6; Triton's interpreter truncates fp32 to
# bf16 and measures ~5.5e-6 on the CPU: the bf16 ceiling (1e-5) holds either way, fp8's would hide bugs.
DTYPE = "bf16"
PRIMARY = "out"
OUTPUTS = {"out": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {"worst_tile_calc_diff": 5e-5}  # as worst_row_calc_diff: 5x the bf16 global ceiling
BLOCK = 128
FP8_MAX = 448.0

# DeepSeek-V4-Flash (deepseek_v4.py:1095-1165; hidden 4096, q_lora 1024, 64 heads x 512, o_groups 8 x
# o_lora 1024, shared expert intermediate 2048): name -> (K, N)
SHAPES = {
    "wqkv_a": (4096, 1536),  # wq_a and wkv fused, the default (SGLANG_OPT_FUSE_WQA_WKV)
    "wq_a": (4096, 1024),  # unfused (SGLANG_OPT_FUSE_WQA_WKV=0)
    "wkv": (4096, 512),
    "wq_b": (1024, 32768),  # column-parallel
    "wq_b_tp2": (1024, 16384),
    "wo_b": (8192, 4096),  # row-parallel
    "wo_b_tp2": (4096, 4096),
    "shared_gate_up": (4096, 4096),
    "shared_down": (2048, 4096),
    # the indexer's q projection (64 heads x 128 from q_lora 1024), the same on every rank
    "idx_wq_b": (1024, 8192),
    # TP4/TP8 (nightly and the tp4-tp8 profile): wq_b column-parallel, wo_b row-parallel over 16384 inputs
    "tp4_wq_b": (1024, 8192),
    "tp8_wq_b": (1024, 4096),
    "tp4_wo_b": (2048, 4096),
    "tp8_wo_b": (1024, 4096),
}
MS = (1, 8, 64, 512, 4096)
MAX_OUTPUT = 1 << 24  # M*N cap: the fp64 oracle's output and the drift metrics stay ~100 MB


_case = case_maker()  # _case(name, tags, M=, K=, N=)


def cases() -> list[Case]:
    out = [
        _case("tiny_m3_k256_n256", {"tiny"}, M=3, K=256, N=256),
        _case("tiny_m1_k512_n128", {"tiny"}, M=1, K=512, N=128),
        # N not a multiple of 128: CUTLASS cannot take it, SGLang falls back to Triton
        _case("tiny_m5_k384_n200", {"tiny"}, M=5, K=384, N=200),
        # K not a multiple of 128: only the pre-quantized Triton GEMM takes it (the quantizer asserts)
        _case("tiny_m4_k320_n256", {"tiny"}, M=4, K=320, N=256),
        # one row past the default config's 64-row M tile: a second tile holding one live row
        _case("tiny_m65_k128_n96", {"tiny"}, M=65, K=128, N=96),
    ]
    # Grid: every shape at M 1, 8, 64, 512, 4096 (decode to prefill chunk) within MAX_OUTPUT, the
    # unfused wq_a/wkv only at 1, 64, 512; and M 256 twice, for CUTLASS's 128x64 swapAB tile (its
    # dispatch: M <= 128 or M % 4 swapAB 128x32, M <= 256 swapAB 128x64, else 128x128).
    for shape, (K, N) in SHAPES.items():
        ms = (1, 64, 512) if shape in ("wq_a", "wkv") else MS
        ms += (256,) if shape in ("wqkv_a", "wo_b") else ()
        for M in sorted(ms):
            if M * N <= MAX_OUTPUT:
                tp = shape.split("_")[0]
                out.append(_case(f"{shape}_m{M}", {"flash", tp} if tp in ("tp4", "tp8") else {"flash"}, M=M, K=K, N=N))
    return out


def cost(case: Case) -> tuple[float, float]:
    """The least a GEMM must move: fp8 A and B once, their fp32 scales, the bf16 output; 2MNK flops."""
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    kb, nb = math.ceil(K / BLOCK), math.ceil(N / BLOCK)
    nbytes = M * K + N * K + 4 * (M * kb + nb * kb) + 2 * M * N
    return float(nbytes), 2.0 * M * N * K


# ---------------------------------------------------------------------------------------------- inputs


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def _e4m3_blocks(g: torch.Tensor, rows: int) -> torch.Tensor:
    """Each [rows x 128] block of g scaled so its largest magnitude is exactly 448, rounded to e4m3:
    the whole e4m3 range is used, as a quantizer with scale amax/448 leaves it. Tail blocks count
    their own elements only."""
    R, C = g.shape
    Rp, Cp = math.ceil(R / rows) * rows, math.ceil(C / BLOCK) * BLOCK
    blocks = _pad_to(g, Rp, Cp).view(Rp // rows, rows, Cp // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    q = (blocks / amax * FP8_MAX).view(Rp, Cp)[:R, :C]
    return q.to(torch.float8_e4m3fn)


def expand(scale: torch.Tensor, rows: int, R: int, C: int, block: int = BLOCK) -> torch.Tensor:
    """Per-block scale [ceil(R/rows), ceil(C/block)] -> per element [R, C]."""
    return scale.repeat_interleave(rows, 0)[:R].repeat_interleave(block, 1)[:, :C]


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    kb, nb = math.ceil(K / BLOCK), math.ceil(N / BLOCK)
    a = _e4m3_blocks(torch.randn(M, K, generator=gen), 1)
    # a power of two per token (2^-12..2^-4, one outlier token at 2^4) times one per group (2^-2..2^2)
    token_exp = torch.randint(-12, -3, (M, 1), generator=gen)
    if M > 1:
        token_exp[torch.randint(0, M, (1,), generator=gen)] = 4
    a_scale = torch.pow(2.0, (token_exp + torch.randint(-2, 3, (M, kb), generator=gen)).float())
    x = (a.float() * expand(a_scale, 1, M, K)).to(torch.bfloat16)
    # weights as a checkpoint holds them: block scales 2^-14..2^-10, so block amax ~0.03..0.4
    weight = _e4m3_blocks(torch.randn(N, K, generator=gen), BLOCK)
    weight_scale = torch.pow(2.0, torch.randint(-14, -9, (nb, kb), generator=gen).float())
    # the premise of the DTYPE: x is exactly a * a_scale (no rounding in bf16, nothing left to quantize);
    # fp32 holds both sides exactly (a power of two times an e4m3 value)
    assert torch.equal(x.float(), a.float() * expand(a_scale, 1, M, K))
    return {"x": x, "a": a, "a_scale": a_scale, "weight": weight, "weight_scale_inv": weight_scale}


# ---------------------------------------------------------------------------------------------- oracle


def dequantize(t: dict, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact float64 values of the activation and the weight (block x block weight scales)."""
    M, K = t["a"].shape
    N = t["weight"].shape[0]
    a = t["a"].double() * expand(t["a_scale"].double(), 1, M, K, block)
    w = t["weight"].double() * expand(t["weight_scale_inv"].double(), block, N, K, block)
    return a, w


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 product of the exactly dequantized operands."""
    a, w = dequantize(t)
    return {"out": a @ w.T}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """calc_diff of each tile of one token by 128 output columns (one weight-scale row), the worst with
    where it is. Per tile, neither the outlier token's energy nor the other column blocks dilute a
    fault confined to one weight block or one token's group."""
    return [worst_tile(outputs["out"], oracle_out["out"], BLOCK)]


def worst_tile(out: torch.Tensor, reference: torch.Tensor, block: int) -> Metric:
    """`worst_tile_calc_diff`: the worst calc_diff over tiles of one token by `block` output columns."""
    x, ref = out.double(), reference.double()
    M, N = ref.shape
    nb = math.ceil(N / block)

    def tiles(t: torch.Tensor) -> torch.Tensor:
        return _pad_to(t, M, nb * block).view(M, nb, block)

    # a non-finite candidate where the reference is finite makes its tile infinite
    bad = tiles((~x.isfinite() & ref.isfinite()).double()).sum(-1) > 0
    xs, rs = tiles(torch.where(x.isfinite(), x, 0.0)), tiles(ref)
    denom = (xs * xs + rs * rs).sum(-1)
    per_tile = torch.where(denom > 0, 1.0 - 2.0 * (xs * rs).sum(-1) / denom.clamp(min=1e-300), 0.0)
    per_tile = torch.where(bad, math.inf, per_tile)
    row, col = divmod(int(per_tile.argmax()), nb)
    return Metric("worst_tile_calc_diff", float(per_tile[row, col]), detail={"row": row, "n_block": col})


# ---------------------------------------------------------------------------------------------- paths


GEMM_FILE = "kernels/ops/gemm/fp8_kernel.py"  # SGLang 0.5.21 on (quantization/ before)
# The device SM120 means here, as SGLang's tuned-config files spell it (get_device_name, spaces as _)
RTX_PRO_6000 = "NVIDIA RTX PRO 6000 Blackwell Server Edition"
# Launch configurations. SGLang 0.5.23 ships no tuned block-FP8 file for an RTX PRO 6000, so there the
# default runs (BLOCK_SIZE_K = the 128 group: the scales step every K tile). Its files for 30 other devices
# pick tiles below the group (BLOCK_SIZE_K 64: the scales step every second tile; BLOCK_SIZE_N 64 < 128),
# which its sanitizer keeps on CUDA: `sglang.triton.subgroup_tiles` runs such a config, read through
# SGLang's own lookup from the L40's file, so that branch is checked before a tuned RTX PRO 6000 file takes it.
SUBGROUP_SOURCE = ("NVIDIA L40", 5120, 2048)  # device, N, K of the tuned file read


def _gemm_module(edit: tuple[str, str] | None = None):
    mod = (
        load_by_path(GEMM_FILE, edit=edit)
        if edit
        else function("sglang.kernels.ops.gemm.fp8_kernel:", "sglang.kernels.ops.quantization.fp8_kernel:")
    )
    if interpreted():
        # the tuned-config lookup reads the CUDA device name: it answers here as on an RTX PRO 6000
        mod.get_device_name = lambda *args: RTX_PRO_6000
    return mod


def subgroup_config(mod) -> dict:
    """The first config (by M) of SGLang's tuned file SUBGROUP_SOURCE whose K tile is below the 128 group,
    as SGLang's lookup returns it on a CUDA device (its sanitizer included)."""
    device, N, K = SUBGROUP_SOURCE
    lookup = getattr(mod.get_w8a8_block_fp8_configs, "__wrapped__", mod.get_w8a8_block_fp8_configs)
    with mock.patch.object(mod, "get_device_name", lambda *a: device), mock.patch.object(mod, "_is_cuda", True):
        table = lookup(N, K, BLOCK, BLOCK) or {}
    below = [table[m] for m in sorted(table) if table[m]["BLOCK_SIZE_K"] < BLOCK]
    if not below:
        raise Unavailable(f"SGLang's tuned file for {device} N={N} K={K} has no K tile below {BLOCK} here")
    return below[0]


@contextlib.contextmanager
def _launch(mod, config: dict | None):
    """The output SGLang allocates for the Triton GEMM (prepare_block_fp8_matmul_inputs), inside guard bands
    and poisoned, so rows written past M or left unwritten show; `config` in place of the tuned lookup."""
    allocs = Allocations()
    real = mod.prepare_block_fp8_matmul_inputs

    def prepare(*args, **kwargs):
        M, N, K, C = real(*args, **kwargs)
        return M, N, K, allocs.like(C)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(mod, "prepare_block_fp8_matmul_inputs", prepare))
        if config is not None:
            stack.enter_context(mock.patch.object(mod, "get_w8a8_block_fp8_configs", lambda *a: {1: config}))
        yield allocs


def _need_k_aligned(case: Case, why: str) -> None:
    if case.params["K"] % BLOCK:
        raise Unavailable(f"K={case.params['K']} is not a multiple of 128: {why}")


def sglang_triton(t: dict, case: Case, subgroup: bool = False, edit: tuple[str, str] | None = None) -> dict:
    """The GEMM alone, from pre-quantized activations (SGLang's `input_scale` branch: bf16 out), with the
    config SGLang picks on the device (or a tuned one with tiles below the group: `subgroup`)."""
    mod = _gemm_module(edit)
    # the tuned files are read beside SGLang's own module (an edited copy lives elsewhere)
    with _launch(mod, subgroup_config(_gemm_module()) if subgroup else None) as allocs:
        out = mod.w8a8_block_fp8_matmul_triton(
            t["a"], t["weight"], t["a_scale"], t["weight_scale_inv"], [BLOCK, BLOCK], output_dtype=torch.bfloat16
        )
    return {"out": out, **allocs.result()}


def sglang_triton_subgroup(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return sglang_triton(t, case, subgroup=True)


def _triton_call(t: dict, case: Case, subgroup: bool = False):
    """The GEMM alone for timing: SGLang's own allocation, no guard bands (their count syncs the device)."""
    mod = _gemm_module()
    config = subgroup_config(mod) if subgroup else None
    args = (t["a"], t["weight"], t["a_scale"], t["weight_scale_inv"], [BLOCK, BLOCK])

    def call():
        if config is None:
            return mod.w8a8_block_fp8_matmul_triton(*args, output_dtype=torch.bfloat16)
        with mock.patch.object(mod, "get_w8a8_block_fp8_configs", lambda *a: {1: config}):
            return mod.w8a8_block_fp8_matmul_triton(*args, output_dtype=torch.bfloat16)

    return call


def sglang_triton_linear(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`--fp8-gemm-backend triton` (and CUTLASS's fallback): quantize x, then the Triton GEMM."""
    _need_k_aligned(case, "SGLang's activation quantizer asserts K % group_size == 0")
    mod = _gemm_module()
    utils = import_module("sglang.srt.layers.quantization.fp8_utils")
    with _launch(mod, None) as allocs:
        out = utils.triton_w8a8_block_fp8_linear(t["x"], t["weight"], [BLOCK, BLOCK], t["weight_scale_inv"])
    return {"out": out, **allocs.result()}


def sglang_cutlass_linear(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The SM120 default: row-padded quantizer, then CUTLASS (Triton where N or K % 128 != 0)."""
    _need_k_aligned(case, "SGLang's activation quantizer asserts K % group_size == 0")
    utils = import_module("sglang.srt.layers.quantization.fp8_utils")
    out = utils.cutlass_w8a8_block_fp8_linear_with_fallback(t["x"], t["weight"], [BLOCK, BLOCK], t["weight_scale_inv"])
    return {"out": out}


def _cutlass_call(t: dict, case: Case):
    """Lay the pre-quantized activations out as SGLang's row-padded quantizer writes them (rows to a
    multiple of 4, zero-filled; scales column-major, stride(0) == 1); return the kernel call alone."""
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    if K % BLOCK or N % BLOCK:
        raise Unavailable(f"CUTLASS takes N and K multiples of 128 (N={N}, K={K}); SGLang falls back to Triton")
    mod = import_module("sglang.kernels.ops.gemm.fp8_blockwise_gemm")
    m_pad = -(-M // 4) * 4
    a = torch.zeros(m_pad, K, dtype=t["a"].dtype, device=t["a"].device)
    a[:M] = t["a"]
    a_scale = torch.zeros(K // BLOCK, m_pad, dtype=torch.float32, device=t["a"].device).T
    a_scale[:M] = t["a_scale"]
    w, ws = t["weight"], t["weight_scale_inv"]
    return lambda: mod.fp8_blockwise_scaled_mm(a, w.T, a_scale, ws.T, torch.bfloat16)


def sglang_cutlass(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The CUTLASS SM120 kernel alone, from pre-quantized activations."""
    return {"out": _cutlass_call(t, case)()[: case.params["M"]]}


def _deepgemm_call(t: dict, case: Case):
    """DeepGEMM's block FP8 GEMM as its tests call it: fp32 scales, per token [M, K/128] and per block
    [N/128, K/128]; SM90's 1D2D kernel takes them as fp32, SM100/SM120 cast them to UE8M0 (exact here:
    they are powers of two)."""
    dg = deepgemm.load()
    M, K, N = (case.params[k] for k in ("M", "K", "N"))
    if K % BLOCK or N % 64:
        raise Unavailable(f"DeepGEMM's block FP8 GEMM takes K % 128 == 0 and N % 64 == 0 (N={N}, K={K})")
    d = torch.empty(M, N, dtype=torch.bfloat16, device=t["a"].device)
    sm90 = torch.cuda.get_device_capability(d.device)[0] == 9
    a, b = (t["a"], t["a_scale"]), (t["weight"], t["weight_scale_inv"])
    return lambda: dg.fp8_gemm_nt(a, b, d, disable_ue8m0_cast=sm90) or d


def deepgemm_fp8(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"out": _deepgemm_call(t, case)()}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 over the exactly dequantized operands"),
    Path(
        "deepgemm",
        deepgemm_fp8,
        golden=True,
        needs_cuda=True,
        timed=_deepgemm_call,
        note="deep_gemm.fp8_gemm_nt: 1D2D fp32 scales on SM90, UE8M0 on SM120",
    ),
    Path(
        "sglang.triton",
        sglang_triton,
        timed=_triton_call,
        note="w8a8_block_fp8_matmul_triton, pre-quantized activations",
    ),
    Path(
        "sglang.triton.subgroup_tiles",
        sglang_triton_subgroup,
        timed=lambda t, case: _triton_call(t, case, subgroup=True),
        note="the same with a tuned config whose tiles are below the 128 group (K tile 64: scales step every 2nd)",
    ),
    Path(
        "sglang.triton.linear",
        sglang_triton_linear,
        note="triton_w8a8_block_fp8_linear from bf16: per_token_group_quant_fp8 + the Triton GEMM",
    ),
    Path(
        "sglang.cutlass",
        sglang_cutlass,
        archs=SM120,
        timed=_cutlass_call,
        note="fp8_blockwise_scaled_mm (JIT CUTLASS SM120), pre-quantized activations",
    ),
    Path(
        "sglang.cutlass.linear",
        sglang_cutlass_linear,
        archs=SM120,
        note="the SM120 default: cutlass_w8a8_block_fp8_linear_with_fallback from bf16",
    ),
]


_SHAPES_LEFT_OUT = "V4-Flash shapes at TP1/TP2/TP4/TP8 and the indexer wq_b; not V4.1's (hidden 5120)"
# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.layers.quantization.fp8_utils:cutlass_w8a8_block_fp8_linear_with_fallback": _SHAPES_LEFT_OUT,
    "sglang.kernels.ops.gemm.fp8_blockwise_gemm:fp8_blockwise_scaled_mm": _SHAPES_LEFT_OUT,
    "sglang.srt.layers.quantization.fp8_utils:triton_w8a8_block_fp8_linear": "128x128 blocks only",
}

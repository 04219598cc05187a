"""DeepSeek-V4.1 mHC, step 4: the post, which rebuilds the 4 residual streams from the sublayer's output,

    R'[j] = post[j] * x + sum_k comb[k, j] * R[k]                     written in bf16 (fp32 FMAs, one rounding)

and, where the next hyper-connection's norm folds into it (the fused prefill kernel), also the next sublayer's
input, kernels/mhc_v41_combine_norm.py's definition applied to R' with this triplet's pre:

    layer_input = RMSNorm(sum_k pre[k] * R'[k]) * norm_weight          (the kernel rounds R' and the sum to bf16)

The post's math is V4's (kernels/mhc_post.py); the kernels and their row-count windows are V4.1's.

Call site: `srt/models/deepseek_v4_mhc.py:run_attn_post(hc, y, residual, stats_stream=..., next=<the FFN's
boundary>, world_size=attn_tp_size, precomputed=state.stats)` (and `run_moe_post`, whose non-collective tail is
the same `_post_fusion`). A plain tensor y (no `AttnOutput`) computes the triplet (`_compute_triplet`:
kernels/mhc_v41_mix.py) and calls `_post_fusion`, which on SM120 (`is_blackwell`, V4.1: pre_from_prev,
hidden 5120, hc_mult 4; attention DP 1, no context-parallel prefill; the SM100-only mega kernel off) takes:
  - 4096..65536 rows with a fusable next norm (a contiguous bf16 [5120] RMSNorm weight):
    `kernels/ops/layernorm/mhc_post_combine_norm_prefill.py:mhc_post_combine_norm_prefill(y, residual, post,
    comb, pre, next.norm.weight, next.norm.variance_epsilon)`: JIT CUDA (`deepseek_v4/
    mhc_post_combine_norm_prefill.cuh`, one 128-thread block per row; it checks 4096 <= rows <= 65536 itself).
    GPU only: `sglang.jit_prefill` calls it directly, `sglang.model` through run_attn_post.
  - otherwise `post(cfg, y, residual, post, comb)`, which takes `kernels/ops/layernorm/mhc_post_split_h.py:
    mhc_post_split_h` up to 384 rows: TRITON, one program per (row, block of H), blocks of 128 columns up to 8
    rows and of 1024 above; runs on the CPU under the interpreter (`sglang.split_h` at any H, the kernel takes
    it; `sglang.model` at hidden 5120). From 385 rows post() takes V4's TileLang `mhc.py:mhc_post`
    (kernels/mhc_post.py's kernel; GPU only, `sglang.model` on the b385 / t4095 cases).
`sglang.model` runs run_attn_post with the triplet handed over as `precomputed` (its own kernel is judged by
kernels/mhc_v41_mix.py), under SM120's platform facts (kernels/mhc_v41_mix.py's sm120_platform) and attention
DP 1; on the CPU it runs only where post() takes split_h (hidden 5120, <= 384 rows).

Not covered: `kernels/ops/communication/all_reduce_mhc.py:all_reduce_mhc_post_combine_norm`, run_attn_post's
`AttnOutput` branch (the attention hands over its un-reduced wo_b rows when `fused_mhc_tp_ok(attn_tp_size)`,
TP2 or TP4): the all-reduce is world-size-templated and needs 2 or 4 GPUs of one host with their symmetric
buffers, which a one-GPU worker of this harness does not have.

Inputs, in the production layout (V4.1-Flash: hidden 5120, hc_mult 4; rms_norm_eps 1e-6, the config default,
assumed for its checkpoint):
  x            [T, H] bf16: the sublayer's (attention's) output after its TP reduction
  residual     [T, 4, H] bf16: the residual streams R before the post
  pre, post    [T, 4] fp32; comb [T, 4, 4] fp32: this hyper-connection's triplet (from R: kernels/mhc_v41_mix.py)
  norm_weight  [H] bf16: the next sublayer's RMSNorm weight (post_attention_layernorm)
Outputs: `residual` [T, 4, H] bf16; where the fused prefill kernel runs also `layer_input` [T, H] bf16.

Input magnitudes: x and R as kernels/mhc_fused_post_pre.py draws them (x ~ N(0, 0.5^2) and R O(1), per-token
scales), the triplet as the split makes it from N(0, 1.28^2) mixes ("typical" regime), norm_weight ~ N(1, 0.2^2).
Edge row where the case asks: a zero token (x and R 0: a padding row; its layer_input is 0, never NaN).
"""

from __future__ import annotations

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    Unavailable,
    calc_diff,
    case_maker,
    guarded_allocations,
    import_module,
    require,
    sibling,
    worst_row_calc_diff,
)

_mix = sibling(__file__, "mhc_v41_mix")
_sinkhorn = sibling(__file__, "mhc_sinkhorn")
_combine_norm = sibling(__file__, "mhc_v41_combine_norm")

OP = "mhc_v41_post"
# five fp32 products per element and one bf16 rounding of R': bf16's ceilings. The fused kernel's layer input
# adds two bf16 roundings (R' and the sum) before its norm, as kernels/mhc_v41_combine_norm.py's kernel does:
# bf16's ceilings too.
DTYPE = "bf16"
PRIMARY = "residual"
OUTPUTS = {"residual": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {"layer_input.calc_diff": 1e-5, "layer_input.worst_row_calc_diff": 5e-5}
HC, HIDDEN, EPS = 4, 5120, 1e-6
SPLIT_H_MAX_ROWS = 384
PREFILL_ROWS = (4096, 65536)


_case = case_maker(H=HIDDEN, edge_rows=True)


def cases() -> list[Case]:
    out = [
        # the kernel takes any H: 1100 is 9 blocks of 128 (up to 8 rows) or 2 of 1024 (above), each with a tail
        _case("tiny_t8_h1100", {"tiny"}, T=8, H=1100),
        _case("tiny_t9_h1100", {"tiny"}, T=9, H=1100),
        # hidden 5120: what post() sends to split_h, through run_attn_post
        _case("tiny_t9", {"tiny"}, T=9),
    ]
    # decode batches (split_h to 384 rows, blocks of 128 up to 8), TileLang's mhc_post from 385, and the fused
    # prefill kernel from 4096 rows
    for t in (1, 8, 9, 64, 384, 385):
        out.append(_case(f"b{t}", {"flash"}, T=t))
    for t in (4095, 4096, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, H = p["T"], p["H"]
    residual = _mix.residual_streams(T, H, gen, edge_rows=False)
    token = torch.pow(2.0, torch.rand(T, 1, generator=gen) * 2 - 1)
    x = (0.5 * torch.randn(T, H, generator=gen) * token).to(torch.bfloat16)
    if p["edge_rows"] and T >= 2:
        residual[-1] = 0
        x[-1] = 0
    scale, base = _sinkhorn.hc_params("typical", gen)
    mixes = torch.randn(T, _mix.MIX, generator=gen) * _sinkhorn.MIXES_STD
    pre, post, comb = _sinkhorn.split_sinkhorn_f64(mixes, scale, base)
    return {
        "x": x.contiguous(),
        "residual": residual.contiguous(),
        "pre": pre.float().contiguous(),
        "post": post.float().contiguous(),
        "comb": comb.float().contiguous(),
        "norm_weight": (1.0 + 0.2 * torch.randn(H, generator=gen)).to(torch.bfloat16),
    }


def cost(case: Case) -> tuple[float, float]:
    """x and R read, R' written, in bf16 (and the layer input where fused); 5 FMAs per element of R'."""
    T, H = case.params["T"], case.params["H"]
    return float(T * H * 2 + 2 * T * HC * H * 2 + T * 24 * 4), float(2.0 * (HC + 1) * T * HC * H)


# ---------------------------------------------------------------------------------------------- oracle


def post_f64(x: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """float64 from the definition: R'[t, j] = post[t, j] x[t] + sum_k comb[t, k, j] R[t, k]."""
    r = residual.double()
    return post.double()[..., None] * x.double()[:, None, :] + torch.einsum("tkj,tkh->tjh", comb.double(), r)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    new = post_f64(t["x"], t["residual"], t["post"], t["comb"])
    layer_input = _combine_norm.combine_norm_f64(new.flatten(1), t["pre"], t["norm_weight"], EPS)
    return {"residual": new, "layer_input": layer_input}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """The fused kernel's layer input (where a path returns one), with the primary's rigour."""
    if "layer_input" not in outputs:
        return []
    got, want = outputs["layer_input"], oracle_out["layer_input"]
    worst, at = worst_row_calc_diff(got, want)
    return [
        Metric("layer_input.calc_diff", calc_diff(got, want)),
        Metric("layer_input.worst_row_calc_diff", worst, detail={"row": at}),
    ]


# ---------------------------------------------------------------------------------------------- paths


def _split_h(module=None):
    return module or import_module("sglang.kernels.ops.layernorm.mhc_post_split_h")


def sglang_split_h(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`mhc_post_split_h` as post() calls it (no block_size: 128 up to 8 rows, 1024 above); `module` is an
    edited copy (tests/ops/planted_mhc_v41_post.py)."""
    if case.params["T"] > SPLIT_H_MAX_ROWS:
        raise Unavailable(f"post() takes mhc_post_split_h only up to {SPLIT_H_MAX_ROWS} rows")
    mod = _split_h(module)
    with guarded_allocations(mod) as allocs:
        new = mod.mhc_post_split_h(t["x"], t["residual"], t["post"], t["comb"])
    return {"residual": new, **allocs.result()}


def _boundary(t: dict):
    """The FFN's boundary as `make_boundary` builds it (norm_fusable decided by SGLang from the weight), its
    norm a stand-in with what the fusion reads of an RMSNorm."""
    from types import SimpleNamespace

    mhc = import_module("sglang.srt.models.deepseek_v4_mhc")
    norm = SimpleNamespace(
        weight=t["norm_weight"], variance_epsilon=EPS, cast_x_before_out_mul=False, variance_size_override=None
    )
    return mhc.make_boundary(norm, accepts_mxfp8=False)


def _reaches(case: Case, on_gpu: bool) -> None:
    """What run_attn_post launches for this case, and whether it can here."""
    T, H = case.params["T"], case.params["H"]
    fused = H == HIDDEN and PREFILL_ROWS[0] <= T <= PREFILL_ROWS[1]
    split = H == HIDDEN and T <= SPLIT_H_MAX_ROWS
    if not (fused or split):
        require("tilelang", "post() takes TileLang's mhc_post here; SGLang pins tilelang==0.1.12")
    if not on_gpu and not split:
        what = "the JIT CUDA fused prefill kernel" if fused else "TileLang's mhc_post"
        raise Unavailable(f"run_attn_post takes {what} on this case: GPU only")


def sglang_model(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`run_attn_post` with a plain-tensor attention output and the triplet precomputed, under SM120's
    platform facts and attention DP 1: `_post_fusion`, then the fused prefill kernel or post()."""
    on_gpu = t["x"].is_cuda
    _reaches(case, on_gpu)
    mhc = import_module("sglang.srt.models.deepseek_v4_mhc")
    parallel = import_module("sglang.srt.runtime_context").get_parallel()
    hc = mhc.HcSubLayer(_mix.hc_config(case.params["H"]), None, None, None, None)
    triplet = (t["pre"], t["post"], t["comb"])
    with _mix.sm120_platform(), parallel.override(attn_dp_size=1, attn_cp_size=1):
        state = mhc.run_attn_post(
            hc,
            t["x"],
            t["residual"],
            stats_stream=None,
            next=_boundary(t),
            world_size=1,
            precomputed=triplet,
        )
    out = {"residual": state.residual}
    if isinstance(state.input, mhc.HcNormed):
        out["layer_input"] = state.input.rows
    return out


def _prefill_call(t: dict, case: Case):
    T, H = case.params["T"], case.params["H"]
    if H != HIDDEN or not PREFILL_ROWS[0] <= T <= PREFILL_ROWS[1]:
        raise Unavailable(f"the fused prefill kernel takes hidden {HIDDEN} and {PREFILL_ROWS} rows only")
    mod = import_module("sglang.kernels.ops.layernorm.mhc_post_combine_norm_prefill")
    args = (t["x"], t["residual"], t["post"], t["comb"], t["pre"], t["norm_weight"], EPS)
    return lambda: mod.mhc_post_combine_norm_prefill(*args)


def sglang_jit_prefill(t: dict, case: Case) -> dict[str, torch.Tensor]:
    new, layer_input = _prefill_call(t, case)()
    return {"residual": new, "layer_input": layer_input}


def _split_timed(t: dict, case: Case):
    fn = _split_h().mhc_post_split_h
    return lambda: fn(t["x"], t["residual"], t["post"], t["comb"])


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.split_h",
        sglang_split_h,
        timed=_split_timed,
        note="mhc_post_split_h.py mhc_post_split_h (Triton), up to 384 rows",
    ),
    Path("sglang.model", sglang_model, note="deepseek_v4_mhc.run_attn_post -> _post_fusion -> post / fused prefill"),
    Path(
        "sglang.jit_prefill",
        sglang_jit_prefill,
        needs_cuda=True,
        timed=_prefill_call,
        note="mhc_post_combine_norm_prefill (JIT CUDA), 4096..65536 rows",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py).
# Not here: all_reduce_mhc_post_combine_norm (TP2/TP4 collective, several GPUs: see the module docstring).
COVERS = {
    "sglang.kernels.ops.layernorm.mhc_post_split_h:mhc_post_split_h": "",
    "sglang.srt.models.deepseek_v4_mhc:post": "the empty batch (T = 0 returns an empty tensor)",
    "sglang.srt.models.deepseek_v4_mhc:_post_fusion": (
        "the SM100 mega-kernel branch (SGLANG_OPT_DSV41_MEGA_MHC_PREFILL), attention DP > 1 and context-parallel "
        "prefill (both fall back to post())"
    ),
    "sglang.kernels.ops.layernorm.mhc_post_combine_norm_prefill:mhc_post_combine_norm_prefill": (
        "rows 8193..65536 (the cases stop at 8192; the kernel's 65536 limit is not crossed)"
    ),
    "sglang.srt.models.deepseek_v4_mhc:run_attn_post": (
        "the AttnOutput branch (all_reduce_mhc_post_combine_norm, TP2/TP4: several GPUs); the triplet computed "
        "in place (handed over as precomputed; its kernel is kernels/mhc_v41_mix.py's) and the stats stream"
    ),
}

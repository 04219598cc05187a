"""DeepSeek-V4 mHC: the fused boundary between one sublayer's hc_post and the next one's hc_pre.

Why an op of its own (see kernels/mhc_sinkhorn.py for the split of the chain): on SM120 this fused
TileLang boundary, not the standalone hc_pre chain, is what runs between sublayers by default.
`_is_fused_mhc_post_pre_enabled()` = FUSE_MHC_POST_PRE and TILELANG_MHC_POST and (TILELANG_MHC_PRE
or is_sm120), so SM120 takes it although its standalone TileLang mhc_pre is off. Its outputs carry
the model's bf16 residual, so it is judged at bf16, where kernels/mhc_pre_norm.py and
kernels/mhc_sinkhorn.py judge their steps at TF32 and fp32.

Call site: `srt/models/deepseek_v4_boundary.py update_and_read` calls
`deepseek_common/amd/deepseek_v4_fused_mhc.py:apply_mhc_post_pre_boundary`, which calls
`kernels/ops/layernorm/mhc.py:mhc_fused_post_pre(x, residual, post[T,4,1], comb, hc_fn, hc_scale,
hc_base, rms_eps, hc_eps, hc_eps, 2.0, 20, norm_weight=<the next sublayer's RMSNorm weight, bf16>,
norm_eps=<its eps>)`. Up to 32 tokens that is one TileLang FMA kernel (post, bf16 residual, GEMM and
sum-of-squares partials, split-K); above, TileLang mhc_post, then the prenorm GEMM (TileLang
gemm_sqrsum on SM120; DeepGEMM's tf32_hc_prenorm_gemm with SGLANG_OPT_DEEPGEMM_HC_PRENORM=1); in both
cases a TileLang big-fuse kernel finishes the split, Sinkhorn, combine and RMSNorm.

Inputs, in the production layout:
  x            [T, 4096] bf16: the sublayer's output
  residual     [T, 4, 4096] bf16: the residual streams before this post
  post         [T, 4, 1] fp32: the previous hc_pre's post (2 sigmoid(.), in (0, 2))
  comb         [T, 4, 4] fp32: the previous hc_pre's comb (doubly stochastic, from Sinkhorn)
  hc_fn        [24, 16384] fp32; hc_scale [3] fp32; hc_base [24] fp32: the next sublayer's mHC weights
  norm_weight  [4096] bf16: the next sublayer's RMSNorm weight
  rms_eps = hc_eps = norm_eps = 1e-6, post multiplier 2.0, 20 Sinkhorn iterations

Outputs (named by meaning):
  residual     [T, 4, 4096] bf16: R'[j] = post[j] * x + sum_k comb[k, j] * R[k]
  post, comb   [T, 4] and [T, 4, 4] fp32: the split of R' (kernels/mhc_sinkhorn.py's definition)
  layer_input  [T, 4096] bf16: RMSNorm(sum_k pre[k] * R'[k]) * norm_weight, what the sublayer reads

Input magnitudes: the residual as in kernels/mhc_pre_norm.py; x ~ N(0, 0.5^2) times a per-token scale;
post and comb as the split makes them from N(0, 1.28^2) mixes (comb in the "typical" regime of
kernels/mhc_sinkhorn.py); hc_fn ~ N(0, 0.01^2); hc_scale, hc_base from kernels/mhc_sinkhorn.py's regime
of the case; norm_weight ~ N(1, 0.2^2). Edge rows: a zero token (x, residual 0: a padding row).
"""

from __future__ import annotations

import types

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    calc_diff,
    case_maker,
    deepgemm,
    import_module,
    require,
    sibling,
    worst_row_calc_diff,
)

_sinkhorn = sibling(__file__, "mhc_sinkhorn")
_pre_norm = sibling(__file__, "mhc_pre_norm")

OP = "mhc_fused_post_pre"
# The residual it writes and the layer input are bf16 (the kernels round R' to bf16 before the GEMM,
# as the unfused path stores it): bf16's ceilings apply to every output. One exception: that rounding
# moves the comb logits by ~hc_scale[2] * |mixes| * 2^-8, and a near-permutation comb ("sharp")
# amplifies it in its worst 4-wide rows: measured with SGLang's torch references on the CPU, comb's
# worst row reaches 4e-5 over 512 tokens and 5.4e-5 over 4096 (global comb calc_diff 1e-6), so its
# ceiling is 10x that. A missing Sinkhorn iteration (2e-5 in the sharp worst row) hides under this
# noise here: kernels/mhc_sinkhorn.py, fed fp32 mixes, is where the Sinkhorn itself is judged.
DTYPE = "bf16"
PRIMARY = "layer_input"
OUTPUTS = {"layer_input": "bfloat16", "residual": "bfloat16", "post": "float32", "comb": "float32"}
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {
    "residual.calc_diff": 1e-5,
    "residual.worst_row_calc_diff": 5e-5,
    "comb.calc_diff": 1e-5,
    "comb.worst_row_calc_diff": 5e-4,
    "post.calc_diff": 1e-5,
}
HC, HIDDEN, K, MIX = 4, 4096, 4 * 4096, 24
EPS = 1e-6
POST_MULT = 2.0
ITERS = 20


_case = case_maker(regime="typical", edge_rows=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t3_typical", {"tiny"}, T=3),
        _case("tiny_t2_sharp", {"tiny"}, T=2, regime="sharp", edge_rows=False),
    ]
    # up to 32 tokens: the FMA kernel (split-K 8 below 8 tokens, else 4); above: post + gemm_sqrsum
    for t in (1, 8, 32):
        out.append(_case(f"b{t}_typical", {"flash"}, T=t))
    out.append(_case("b8_sharp", {"flash"}, T=8, regime="sharp"))
    for t in (33, 128):
        out.append(_case(f"b{t}_typical", {"flash"}, T=t))
    for t in (1024, 8192):
        out.append(_case(f"t{t}_typical", {"flash"}, T=t))
    out.append(_case("t1024_sharp", {"flash"}, T=1024, regime="sharp"))
    return out


def post_inputs(T: int, gen: torch.Generator, edge_rows: bool) -> tuple[torch.Tensor, ...]:
    """What an mHC post reads: x [T, 4096] bf16, the residual [T, 4, 4096] bf16 (a zero last row with
    `edge_rows`: a padding token), and the previous boundary's post [T, 4] and comb [T, 4, 4] (float64), as
    the split makes them (kernels/mhc_post.py draws the same)."""
    residual = _pre_norm.residual_streams(T, gen, edge_rows=False)
    token = torch.pow(2.0, torch.rand(T, 1, generator=gen) * 2 - 1)
    x = (0.5 * torch.randn(T, HIDDEN, generator=gen) * token).to(torch.bfloat16)
    if edge_rows and T >= 2:
        residual[-1] = 0
        x[-1] = 0
    prev_scale, prev_base = _sinkhorn.hc_params("typical", gen)
    prev_mixes = torch.randn(T, MIX, generator=gen) * _sinkhorn.MIXES_STD
    _, post, comb = _sinkhorn.split_sinkhorn_f64(prev_mixes, prev_scale, prev_base)
    return x, residual, post, comb


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T = p["T"]
    x, residual, post, comb = post_inputs(T, gen, p["edge_rows"])
    scale, base = _sinkhorn.hc_params(p["regime"], gen)
    return {
        "x": x.contiguous(),
        "residual": residual,
        "post": post.float().view(T, HC, 1).contiguous(),
        "comb": comb.float().contiguous(),
        "hc_fn": (torch.randn(MIX, K, generator=gen) * _pre_norm.HC_FN_STD).contiguous(),
        "hc_scale": scale,
        "hc_base": base,
        "norm_weight": (1.0 + 0.2 * torch.randn(HIDDEN, generator=gen)).to(torch.bfloat16),
    }


def cost(case: Case) -> tuple[float, float]:
    """Read x, the residual and hc_fn once, write the new residual and the layer input; the post
    (4 x 5 FMAs per element), the GEMM and the combine."""
    T = case.params["T"]
    nbytes = T * HIDDEN * 2 + 2 * T * K * 2 + MIX * K * 4 + T * HIDDEN * 2 + T * (HC + HC * HC) * 4 * 2
    flops = T * K * 2 * (HC + 1) + 2.0 * T * K * MIX + 2.0 * T * K + 4.0 * T * HIDDEN
    return float(nbytes), float(flops)


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition, composed from the step oracles of kernels/mhc_pre_norm.py and
    kernels/mhc_sinkhorn.py; nothing is rounded to bf16 on the way."""
    r = t["residual"].double()
    comb_prev = t["comb"].double()
    post_prev = t["post"].double().view(-1, HC)
    r_new = post_prev[..., None] * t["x"].double()[:, None, :] + torch.einsum("tkj,tkh->tjh", comb_prev, r)
    mixes = _pre_norm.pre_norm_f64(r_new, t["hc_fn"], EPS)
    pre, post, comb = _sinkhorn.split_sinkhorn_f64(mixes, t["hc_scale"], t["hc_base"], ITERS, EPS)
    y = torch.einsum("tk,tkh->th", pre, r_new)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + EPS) * t["norm_weight"].double()
    return {"residual": r_new, "post": post, "comb": comb, "layer_input": y}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """The residual the next layers inherit and the new comb and post, with the primary's rigour."""
    found = []
    for name in ("residual", "comb"):
        found.append(Metric(f"{name}.calc_diff", calc_diff(outputs[name], oracle_out[name])))
        worst, at = worst_row_calc_diff(outputs[name], oracle_out[name])
        found.append(Metric(f"{name}.worst_row_calc_diff", worst, detail={"row": at}))
    found.append(Metric("post.calc_diff", calc_diff(outputs["post"], oracle_out["post"])))
    return found


# ---------------------------------------------------------------------------------------------- paths


def _tilelang_call(t: dict, case: Case):
    require("tilelang", "SGLang pins tilelang==0.1.12")
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    parallel = import_module("sglang.srt.runtime_context").get_parallel()
    # the layer input is allocated under use_symmetric_memory(tp_group): a one-rank group makes that
    # a plain allocation, as on a TP=1 server
    one_rank = types.SimpleNamespace(world_size=1)

    def call():
        with parallel.override(tp_group=one_rank):
            return mhc.mhc_fused_post_pre(
                t["x"],
                t["residual"],
                t["post"],
                t["comb"],
                t["hc_fn"],
                t["hc_scale"],
                t["hc_base"],
                EPS,
                EPS,
                EPS,
                POST_MULT,
                ITERS,
                norm_weight=t["norm_weight"],
                norm_eps=EPS,
            )

    return call


def sglang_tilelang(t: dict, case: Case) -> dict[str, torch.Tensor]:
    residual, post, comb, layer_input = _tilelang_call(t, case)()
    return {"residual": residual, "post": post.squeeze(-1), "comb": comb, "layer_input": layer_input}


def sglang_tilelang_deepgemm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The same with SGLANG_OPT_DEEPGEMM_HC_PRENORM=1: DeepGEMM's TF32 GEMM above 32 tokens."""
    deepgemm.load()
    return sglang_tilelang(t, case)


def _tilelang_timed(t: dict, case: Case):
    call = _tilelang_call(t, case)
    call()  # JIT-compile outside the timing
    return call


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The unfused torch references in the wheel, `_mhc_post_torch` then `_mhc_pre_torch` (what
    `_mhc_pre_dispatch` runs with TileLang's pre off, as on SM120), then the RMSNorm. The norm is
    RMSNorm.forward_native's arithmetic, written out: `sglang.srt.layers.layernorm` imports the model
    configs and their vision processors, which a CPU-only host may not be able to import."""
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    residual = mhc._mhc_post_torch(t["x"], t["residual"], t["post"], t["comb"])
    post, comb, layer_input = mhc._mhc_pre_torch(
        residual, t["hc_fn"], t["hc_scale"], t["hc_base"], EPS, EPS, EPS, POST_MULT, ITERS
    )
    y = layer_input.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + EPS)
    y = (y * t["norm_weight"]).to(torch.bfloat16)
    return {"residual": residual, "post": post.squeeze(-1), "comb": comb, "layer_input": y}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.tilelang",
        sglang_tilelang,
        needs_cuda=True,
        timed=_tilelang_timed,
        env={"SGLANG_OPT_DEEPGEMM_HC_PRENORM": "0"},
        note="mhc_fused_post_pre as SM120 runs it: TileLang FMA kernel (<= 32 tokens) or post + gemm_sqrsum",
    ),
    Path(
        "sglang.tilelang_deepgemm",
        sglang_tilelang_deepgemm,
        needs_cuda=True,
        timed=_tilelang_timed,
        env={"SGLANG_OPT_DEEPGEMM_HC_PRENORM": "1"},
        note="mhc_fused_post_pre with DeepGEMM's tf32_hc_prenorm_gemm above 32 tokens",
    ),
    Path("sglang.torch", sglang_torch, note="_mhc_post_torch + _mhc_pre_torch + RMSNorm, fp32 with bf16 residual"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc:mhc_fused_post_pre": "",
}

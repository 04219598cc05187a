"""DeepSeek-V4 mHC: the standalone post, R'[j] = post[j] * x + sum_k comb[k, j] * R[k], written in bf16.

Why an op of its own (see kernels/mhc_sinkhorn.py for the split of the chain): between fused sublayers
SM120 runs the post inside mhc_fused_post_pre (kernels/mhc_fused_post_pre.py); this TileLang kernel,
`kernels/ops/layernorm/mhc.py:mhc_post` (`mhc_post_tilelang`), is what runs where no next pre is
fused to it. Read from the 0.5.23 sources, on SM120 with V4 (hc_pre_from_prev_sublayer False, hidden
4096) that is:
  - the last layer's MoE post before hc_head: `deepseek_v4_boundary.py FinalRead.update_and_read` ->
    `HcUpdate.update` -> `DeepseekV4DecoderLayerBase.hc_post` -> `deepseek_v4_mhc.py:post`;
  - `deepseek_v4_boundary.py materialize` (pipeline-parallel stage ends, the DSpark hidden-state capture);
  - the DSpark draft layers (`deepseek_v4_dspark.py`, boundary_mhc_fusions=False), and every boundary
    when SGLANG_OPT_FUSE_MHC_POST_PRE=0 (`HcReadCall.update_and_read` then calls `update.update`);
  - inside mhc_fused_post_pre itself above 32 tokens (it launches `mhc_post_tilelang` first).
`deepseek_v4_mhc.py:post` takes `mhc_post` when SGLANG_OPT_USE_TILELANG_MHC_POST (default True; SM120
leaves it on, `arg_groups/model_hook.py` only turns off the pre) and neither the Blackwell/hidden-5120
`mhc_post_split_h` branch (V4.1) nor SGLANG_OPT_USE_FLASHINFER_MHC (default False) applies. With
TileLang's post off, `_mhc_post_dispatch` runs SGLang's torch reference `_mhc_post_torch`.

`mhc_post` launches one CTA per (token, 1024-wide block of H) up to 256 tokens (num_h_blocks = 4) and
one per token above (num_h_blocks = 1, a loop over the 4 blocks): the flash cases cross 256.

Inputs, in the production layout (`HcUpdate.post` passes the layer's ReadState):
  x         [T, 4096] bf16: the sublayer's output
  residual  [T, 4, 4096] bf16: the residual streams before the post
  post      [T, 4] fp32: hc_pre's post (2 sigmoid(.), in (0, 2)); mhc_post squeezes a [T, 4, 1] too
  comb      [T, 4, 4] fp32: hc_pre's comb (doubly stochastic, from Sinkhorn)
Output: `residual` [T, 4, 4096] bf16 (fp32 FMAs, one rounding).

Input magnitudes: as kernels/mhc_fused_post_pre.py (its residual, x, post and comb); the "large" cases
scale x and the residual by 2^12 (late-layer residual growth). Edge row: a zero token (x and residual 0).
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Path, case_maker, import_module, require, sibling

_fused = sibling(__file__, "mhc_fused_post_pre")  # its post inputs: the same draws

OP = "mhc_post"
# five fp32 products per element and one bf16 rounding of the output: bf16's ceilings apply.
DTYPE = "bf16"
PRIMARY = "residual"
OUTPUTS = {"residual": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
HC, HIDDEN = 4, 4096


_case = case_maker(scale=1.0, edge_rows=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t3", {"tiny"}, T=3),
        _case("tiny_t2_large", {"tiny"}, T=2, scale=4096.0, edge_rows=False),
    ]
    # up to 256 tokens four CTAs per token (one per 1024-wide block), above one CTA per token
    for t in (1, 8, 32, 256, 257, 1024, 8192):
        out.append(_case(f"{'b' if t <= 257 else 't'}{t}", {"flash"}, T=t))
    out.append(_case("t1024_large", {"flash"}, T=1024, scale=4096.0))
    return out


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, scale = p["T"], p["scale"]
    x, residual, post, comb = _fused.post_inputs(T, gen, p["edge_rows"])
    if scale != 1.0:  # a power of two: the bf16 values scale exactly (the zero padding row stays zero)
        residual, x = residual * scale, x * scale
    return {
        "x": x.contiguous(),
        "residual": residual.contiguous(),
        "post": post.float().view(T, HC).contiguous(),
        "comb": comb.float().view(T, HC, HC).contiguous(),
    }


def cost(case: Case) -> tuple[float, float]:
    """x and the residual read, the new residual written, in bf16; 5 FMAs per output element."""
    T = case.params["T"]
    nbytes = T * HIDDEN * 2 + 2 * T * HC * HIDDEN * 2 + T * (HC + HC * HC) * 4
    return float(nbytes), float(2.0 * (HC + 1) * T * HC * HIDDEN)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition."""
    r = t["residual"].double()
    post = t["post"].double().view(-1, HC)
    new = post[..., None] * t["x"].double()[:, None, :] + torch.einsum("tkj,tkh->tjh", t["comb"].double(), r)
    return {"residual": new}


# ---------------------------------------------------------------------------------------------- paths


def _tilelang_call(t: dict, case: Case):
    require("tilelang", "SGLang pins tilelang==0.1.12")
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    parallel = import_module("sglang.srt.runtime_context").get_parallel()

    def call():
        # mhc_post asks is_dsa_prefill_cp_interleave(), which reads attn_cp_size: no context
        # parallelism, as on a one-rank server (nothing is published in the harness's worker)
        with parallel.override(attn_cp_size=1):
            return mhc.mhc_post(t["x"], t["residual"], t["post"], t["comb"])

    return call


def sglang_tilelang(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"residual": _tilelang_call(t, case)()}


def _tilelang_timed(t: dict, case: Case):
    call = _tilelang_call(t, case)
    call()  # JIT-compile outside the timing
    return call


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`_mhc_post_torch`, what `_mhc_post_dispatch` runs with TileLang's post off; it broadcasts
    post as [T, 4, 1] (hc_post's view), so it gets that shape."""
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    return {"residual": mhc._mhc_post_torch(t["x"], t["residual"], t["post"].unsqueeze(-1), t["comb"])}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.tilelang",
        sglang_tilelang,
        needs_cuda=True,
        timed=_tilelang_timed,
        note="mhc.py mhc_post (mhc_post_tilelang), as deepseek_v4_mhc.post runs it on SM120",
    ),
    Path("sglang.torch", sglang_torch, note="mhc.py _mhc_post_torch, fp32 with one bf16 rounding"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc:mhc_post": (
        "the DSA prefill context-parallel interleave (strict_contiguous copies first), not a V4 path on SM120"
    ),
}

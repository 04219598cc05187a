"""The fused mHC post/pre boundary fed the bugs a fused kernel really has. Each fault is SGLang's own
torch references (`_mhc_post_torch`, `_mhc_pre_torch`) with one change: the previous comb read with
its indices exchanged, the sublayer output left out of the post, the combine taken from the old
residual, one split-K partial of the GEMM lost, the post multiplier dropped, the RMSNorm weight left
off. Beside them, the same composition unchanged, which must pass."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, import_module, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_fused_post_pre.py")
OP = "planted_mhc_fused_post_pre"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
EPS, ITERS, HC, K = _real.EPS, _real.ITERS, _real.HC, _real.K


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _composed(t, *, comb_transposed=False, x_dropped=False, pre_on_old=False, split_lost=False, post_mult=2.0,
              norm_weight=True):  # fmt: skip
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    comb_prev = t["comb"].transpose(-1, -2) if comb_transposed else t["comb"]
    x = torch.zeros_like(t["x"]) if x_dropped else t["x"]
    residual = mhc._mhc_post_torch(x, t["residual"], t["post"], comb_prev)
    fn = t["hc_fn"].clone()
    if split_lost:
        fn[:, K - K // 8 :] = 0  # the last of 8 split-K partials never added
    post, comb, layer_input = mhc._mhc_pre_torch(
        residual, fn, t["hc_scale"], t["hc_base"], EPS, EPS, EPS, post_mult, ITERS
    )
    if pre_on_old:  # the new pre weights applied to the residual from before the post
        x_flat = residual.flatten(1).float()
        mixes = torch.nn.functional.linear(x_flat, fn) * torch.rsqrt(x_flat.square().mean(-1, keepdim=True) + EPS)
        pre = torch.sigmoid(mixes[:, :HC] * t["hc_scale"][0] + t["hc_base"][:HC]) + EPS
        layer_input = (pre[..., None] * t["residual"].float()).sum(1).to(torch.bfloat16)
    y = layer_input.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + EPS)
    y = (y * t["norm_weight"] if norm_weight else y).to(torch.bfloat16)
    return {"residual": residual, "post": post.squeeze(-1), "comb": comb, "layer_input": y}


PATHS = list(_real.PATHS) + [
    Path("planted.clean", lambda t, c: _composed(t)),
    Path("planted.prev_comb_transposed", lambda t, c: _composed(t, comb_transposed=True)),
    Path("planted.sublayer_output_dropped", lambda t, c: _composed(t, x_dropped=True)),
    Path("planted.combine_of_old_residual", lambda t, c: _composed(t, pre_on_old=True)),
    Path("planted.split_k_partial_lost", lambda t, c: _composed(t, split_lost=True)),
    Path("planted.post_mult_dropped", lambda t, c: _composed(t, post_mult=1.0)),
    Path("planted.norm_weight_dropped", lambda t, c: _composed(t, norm_weight=False)),
]

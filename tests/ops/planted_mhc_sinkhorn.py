"""The real mHC split/Sinkhorn op fed the bugs such a kernel really has. Where SGLang's Triton kernel can
carry the bug through a wrong argument, it does (one iteration short, eps dropped); the rest are an
fp32 torch transcription of the kernel with one change each, beside the same transcription unchanged
(which must pass, so a flag is the fault's and not the transcription's)."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_sinkhorn.py")
OP = "planted_mhc_sinkhorn"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
HC, ITERS, EPS = _real.HC, _real.ITERS, _real.EPS


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _fp32(t, *, iters=ITERS, pre_eps=EPS, sk_eps=EPS, row_dim=-1, col_dim=-2, max_shift=True, post_mult=2.0):
    """The kernel's arithmetic in fp32, with the knobs a bug turns."""
    m = t["mixes"].reshape(-1, (2 + HC) * HC).float()
    s, b = t["hc_scale"].float(), t["hc_base"].float()
    pre = torch.sigmoid(m[:, :HC] * s[0] + b[:HC]) + pre_eps
    post = post_mult * torch.sigmoid(m[:, HC : 2 * HC] * s[1] + b[HC : 2 * HC])
    comb = (m[:, 2 * HC :] * s[2] + b[2 * HC :]).view(-1, HC, HC)
    if max_shift:
        comb = comb - comb.amax(dim=row_dim, keepdim=True)
    comb = torch.exp(comb)
    comb = comb / comb.sum(dim=row_dim, keepdim=True) + sk_eps
    comb = comb / (comb.sum(dim=col_dim, keepdim=True) + sk_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=row_dim, keepdim=True) + sk_eps)
        comb = comb / (comb.sum(dim=col_dim, keepdim=True) + sk_eps)
    T = t["mixes"].shape[0]
    return {"pre": pre.view(T, 1, HC), "post": post.view(T, 1, HC), "comb": comb.view(T, 1, HC, HC)}


def _triton(t, iters=ITERS, eps=EPS):
    mhc = _real._mhc()
    return _real._named(*mhc._hc_split_sinkhorn_triton(t["mixes"], t["hc_scale"], t["hc_base"], HC, iters, eps))


def comb_transposed(t, case):
    """The comb stored with its two indices exchanged (comb[k, j] for comb[j, k])."""
    out = _real.sglang_triton(t, case)
    return {**out, "comb": out["comb"].transpose(-1, -2).contiguous()}


PATHS = list(_real.PATHS) + [
    Path("planted.clean_fp32", lambda t, c: _fp32(t)),
    Path("planted.iteration_missing", lambda t, c: _triton(t, iters=ITERS - 1)),
    Path("planted.eps_dropped", lambda t, c: _triton(t, eps=0.0)),
    Path("planted.sinkhorn_eps_dropped", lambda t, c: _fp32(t, sk_eps=0.0)),
    Path("planted.pre_eps_dropped", lambda t, c: _fp32(t, pre_eps=0.0)),
    Path("planted.row_col_swapped", lambda t, c: _fp32(t, row_dim=-2, col_dim=-1)),
    Path("planted.no_max_shift", lambda t, c: _fp32(t, max_shift=False)),
    Path("planted.post_mult_dropped", lambda t, c: _fp32(t, post_mult=1.0)),
    Path("planted.comb_transposed", comb_transposed),
]

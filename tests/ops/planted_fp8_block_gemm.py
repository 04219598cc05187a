"""The real FP8 block GEMM op with SGLang's Triton kernel fed the bugs a block-scaled GEMM really has:
a weight scale grid read transposed, one block's scale one UE8M0 step (x2) off, the activations
quantized with one scale for the whole tensor instead of one per token and 128-group, the GEMM reading
each token's first group scale for every group, the K tail past the last whole 128-block dropped.
Each must be flagged; the clean kernel must not be."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, Unavailable, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "fp8_block_gemm.py")
OP = "planted_fp8_block_gemm"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics, cost = _real.make_inputs, _real.metrics, _real.cost
BLOCK = _real.BLOCK

SQUARE = "tiny_m3_k256_n256"  # a square scale grid, so the transposed one still has the right shape
K_TAIL = "tiny_m4_k320_n256"


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _gemm(t: dict, a, a_scale, weight, weight_scale) -> dict:
    return _real.sglang_triton(
        {**t, "a": a, "a_scale": a_scale, "weight": weight, "weight_scale_inv": weight_scale}, None
    )


def weight_scale_transposed(t, case):
    """weight_scale_inv read as [K/128, N/128]: block (n, k) gets the scale of block (k, n)."""
    ws = t["weight_scale_inv"]
    if ws.shape[0] != ws.shape[1]:
        raise Unavailable("the transposed scale grid has the wrong shape here (N/128 != K/128)")
    return _gemm(t, t["a"], t["a_scale"], t["weight"], ws.T.contiguous())


def weight_scale_off_by_one(t, case):
    """One weight block's UE8M0 scale one exponent step too large (x2)."""
    ws = t["weight_scale_inv"].clone()
    ws[-1, 0] *= 2.0
    return _gemm(t, t["a"], t["a_scale"], t["weight"], ws)


def act_scale_per_tensor(t, case):
    """The activations quantized with one scale, amax(x)/448, as a per-tensor quantizer would, and
    that scale handed to the GEMM for every token and group."""
    x = t["x"].float()
    scale = x.abs().amax() / _real.FP8_MAX
    a = (x / scale).to(torch.float8_e4m3fn)
    return _gemm(t, a, scale.expand_as(t["a_scale"]).contiguous(), t["weight"], t["weight_scale_inv"])


def act_scale_first_group(t, case):
    """The GEMM never steps its activation-scale pointer along K: every group gets group 0's scale."""
    first = t["a_scale"][:, :1].expand_as(t["a_scale"]).contiguous()
    return _gemm(t, t["a"], first, t["weight"], t["weight_scale_inv"])


def k_tail_dropped(t, case):
    """Only the whole 128-blocks of K multiplied: the partial last block is skipped."""
    K = t["a"].shape[1]
    if K % BLOCK == 0:
        raise Unavailable("K has no tail here")
    k, kb = K // BLOCK * BLOCK, K // BLOCK
    return _gemm(
        t,
        t["a"][:, :k].contiguous(),
        t["a_scale"][:, :kb].contiguous(),
        t["weight"][:, :k].contiguous(),
        t["weight_scale_inv"][:, :kb].contiguous(),
    )


# every real path (the GPU ones skip here with their reason), then the faults
PATHS = list(_real.PATHS) + [
    Path("planted.weight_scale_transposed", weight_scale_transposed),
    Path("planted.weight_scale_off_by_one", weight_scale_off_by_one),
    Path("planted.act_scale_per_tensor", act_scale_per_tensor),
    Path("planted.act_scale_first_group", act_scale_first_group),
    Path("planted.k_tail_dropped", k_tail_dropped),
]

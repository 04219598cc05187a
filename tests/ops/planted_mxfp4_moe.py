"""The real MXFP4 MoE op with SGLang's CPU-capable path (SGLANG_DSV4_FP4_DEQUANT: SGLang's FP4 -> block-FP8
conversion and its Triton fused-MoE kernels) fed the bugs an MXFP4 MoE really has. Each must be flagged
by the op's metrics and ceilings; the clean path must not be."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mxfp4_moe.py")
OP = "planted_mxfp4_moe"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
CASE = "tiny_t16"


def cases():
    return [c for c in _real.cases() if c.name == CASE]


def _path(t, case, **kw):
    return _real.sglang_fp4_dequant_triton(t, case, **kw)


def _swap_nibbles(w: torch.Tensor) -> torch.Tensor:
    u = w.view(torch.uint8)
    return ((u & 0xF) << 4 | u >> 4).view(torch.int8)


def nibble_order_swapped(t, case):
    """The decoder reads the high nibble as the even k (the packing convention inverted)."""
    return _path({**t, "w13_weight": _swap_nibbles(t["w13_weight"]), "w2_weight": _swap_nibbles(t["w2_weight"])}, case)


def scale_exponent_off_by_one(t, case):
    """E8M0 decoded with bias 126 instead of 127 for the down projection: every output exactly 2x, which
    cosine cannot see."""
    return _path({**t, "w2_weight_scale_inv": t["w2_weight_scale_inv"] + 1}, case)


def gate_up_swapped(t, case):
    """W13 taken as [gate; up] where the checkpoint order is [up; gate] (the PR-era Triton kernel's
    assumption, or a loader that ignores load_up_proj_weight_first)."""
    swap = lambda w: torch.cat(w.chunk(2, dim=1)[::-1], dim=1).contiguous()  # noqa: E731
    swapped = {"w13_weight": swap(t["w13_weight"]), "w13_weight_scale_inv": swap(t["w13_weight_scale_inv"])}
    return _path({**t, **swapped}, case)


def swiglu_limit_ignored(t, case):
    """No clamp before the SiLU (swiglu_limit dropped on the way to the activation kernel)."""
    return _path(t, case, swiglu_limit=None)


def wrong_expert_weights(t, case):
    """The least-used expert reads its neighbour's weights and scales (an expert index off by one)."""
    counts = torch.bincount(t["topk_ids"].flatten().long(), minlength=case.params["E"])
    e = int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
    other = (e + 1) % case.params["E"]
    bad = dict(t)
    for name in ("w13_weight", "w2_weight", "w13_weight_scale_inv", "w2_weight_scale_inv"):
        bad[name] = t[name].clone()
        bad[name][e] = t[name][other]
    return _path(bad, case)


def routed_scaling_twice(t, case):
    """routed_scaling_factor applied by TopK and again by the runner."""
    return _path(t, case, routed_scaling_factor=_real.ROUTED_SCALING_FACTOR**2)


FAULTS = [
    nibble_order_swapped,
    scale_exponent_off_by_one,
    gate_up_swapped,
    swiglu_limit_ignored,
    wrong_expert_weights,
    routed_scaling_twice,
]
PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.fp4_dequant_triton")] + [
    Path(f"planted.{f.__name__}", f) for f in FAULTS
]

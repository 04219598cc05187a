"""The real hash routing op, its SGLang paths clean, and SGLang's Triton kernel fed the bugs a hash
router really has: the wrong routed scaling factor, softplus without its square root, the fused shared
slot given the wrong expert id, the routed ids shifted against their weights. Each must be flagged."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "hash_topk.py")
OP = "planted_hash_topk"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, valid_region, metrics = _real.make_inputs, _real.valid_region, _real.metrics
CASE = "tiny_t64_s1"
TOPK = _real.TOPK


def cases():
    return [c for c in _real.cases() if c.name == CASE]


def wrong_scaling_factor(t, case):
    """routed_scaling_factor 1.0 where the model's is 1.5 (the default of dsv4.hash_topk's signature)."""
    return _real.sglang_triton(t, case, rsf=1.0)


def softplus_without_sqrt(t, case):
    """Scores softplus(x) rather than sqrt(softplus(x)): the renormalised squares of the right weights."""
    out = _real.sglang_triton(t, case)
    w = out["topk_weights"][:, :TOPK]
    out["topk_weights"][:, :TOPK] = w * w / (w * w).sum(1, keepdim=True)
    return out


def shared_slot_id_wrong(t, case):
    """The fused shared slot numbered 255 (num_routed_experts - 1) rather than 256."""
    out = _real.sglang_triton(t, case)
    out["topk_ids"][:, TOPK:] -= 1
    return out


def ids_shifted(t, case):
    """The routed ids one column off their weights."""
    out = _real.sglang_triton(t, case)
    out["topk_ids"][:, :TOPK] = torch.roll(out["topk_ids"][:, :TOPK], 1, dims=1)
    return out


PATHS = [p for p in _real.PATHS if p.name != "sglang.cuda"] + [
    Path("planted.wrong_scaling_factor", wrong_scaling_factor),
    Path("planted.softplus_without_sqrt", softplus_without_sqrt),
    Path("planted.shared_slot_id_wrong", shared_slot_id_wrong),
    Path("planted.ids_shifted", ids_shifted),
]

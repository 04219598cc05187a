"""engram_hash with a fault its Triton kernel can really have: the sequence-start mask off by one
(`pos < s` written `pos <= s`: a token's own position blocks the shift that reaches the sequence's first
token), in a copy of kernels/ops/embeddings/engram_hash.py. The clean paths run beside it."""

from __future__ import annotations

import functools
from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "engram_hash.py")
OP = "planted_engram_hash"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS, CEILINGS = (
    _real.DTYPE,
    _real.PRIMARY,
    _real.TOLERANCE,
    _real.OUTPUTS,
    _real.CEILINGS,
)
make_inputs, cost, metrics = _real.make_inputs, _real.cost, _real.metrics
CASES = ("tiny_decode_b6", "tiny_extend_4req_pad3")

SHIPPED = "blk = (pos[:, None] < s) | (real2 == 0)"
PLANTED = "blk = (pos[:, None] <= s) | (real2 == 0)"


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def patched():
    return load_by_path(_real.HASH_PY, edit=(SHIPPED, PLANTED))


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton", "sglang.torch")] + [
    Path("planted.start_mask_off_by_one", lambda t, c: _real.sglang_triton(t, c, module=patched())),
]

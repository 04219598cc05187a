"""engram_gate with faults its two Triton kernels can really have, each in a copy of SGLang's file: the
lookup's shard test off by one at its upper edge (`idx < row_hi` written `idx <= row_hi`: the next
rank's first row is read as this rank's), and the gate's mean of squares divided by the padded block
width B rather than D (equal only where D is a power of two). The clean paths run beside them."""

from __future__ import annotations

import functools
from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "engram_gate.py")
OP = "planted_engram_gate"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS, CEILINGS = (
    _real.DTYPE,
    _real.PRIMARY,
    _real.TOLERANCE,
    _real.OUTPUTS,
    _real.CEILINGS,
)
make_inputs, cost, metrics = _real.make_inputs, _real.cost, _real.metrics
CASES = ("tiny_t2_tp4_rank1_image", "tiny_t4_d96")

GATHER_EDIT = ("owned = (idx >= row_lo) & (idx < row_hi)", "owned = (idx >= row_lo) & (idx <= row_hi)")
GATE_EDIT = ("tl.sum(x * x, 0) / D + EPS", "tl.sum(x * x, 0) / B + EPS")


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def gather_edited():
    return load_by_path(_real.GATHER_PY, edit=GATHER_EDIT)


@functools.cache
def gate_edited():
    return load_by_path(_real.GATE_PY, edit=GATE_EDIT)


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton", "sglang.torch")] + [
    Path("planted.shard_upper_edge", lambda t, c: _real.sglang_triton(t, c, gather_module=gather_edited())),
    Path("planted.mean_over_block", lambda t, c: _real.sglang_triton(t, c, gate_module=gate_edited())),
]

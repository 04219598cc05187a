"""SGLang's Triton hc_head kernel, copied from kernels/ops/layernorm/mhc_head.py with one line changed:
the mean of squares taken over one stream's width (hidden_size) rather than all four (K_TOTAL), and
the rsqrt's norm_eps dropped (the zero padding row then divides 0 by 0). The clean paths run beside."""

from __future__ import annotations

import functools
from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_head.py")
OP = "planted_mhc_head"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs, cost = _real.make_inputs, _real.cost
CASE = "tiny_t4_edge"

SHIPPED = "rsqrt = tl.rsqrt(sumsq / K_TOTAL + norm_eps)"
EDITS = {
    "mean_over_one_stream": "rsqrt = tl.rsqrt(sumsq / hidden_size + norm_eps)",
    "norm_eps_dropped": "rsqrt = tl.rsqrt(sumsq / K_TOTAL)",
}


def cases():
    return [c for c in _real.cases() if c.name == CASE]


@functools.cache
def patched(tag: str):
    """mhc_head.py with EDITS[tag] for its rsqrt line (a copy: Triton reads a kernel's source from its file)."""
    return load_by_path("kernels/ops/layernorm/mhc_head.py", edit=(SHIPPED, EDITS[tag]))


PATHS = list(_real.PATHS) + [
    Path(f"planted.{tag}", lambda t, c, tag=tag: _real.sglang_triton(t, c, module=patched(tag))) for tag in EDITS
]

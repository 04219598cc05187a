"""SGLang's clamped SwiGLU (the ROCm Triton kernel, the CPU-runnable build of the op) copied from
kernels/ops/activation/silu_and_mul_clamp_hip.py with one line changed: up clamped only from above
(the lower bound dropped), and the up half read at the gate's offset (`+ inter_size` dropped). The clean
paths run beside. Not planted: a gate clamped from below too (silu(-10) = -4.5e-4 where the definition
gives silu(g) ~ 0), which moves no output by more than bf16's rounding: no drift metric can see it."""

from __future__ import annotations

import functools
from pathlib import Path as _P

from harness.parity.op import Path, import_module, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "silu_and_mul_clamp.py")
OP = "planted_silu_and_mul_clamp"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, cost = _real.make_inputs, _real.cost
CASES = ("tiny_t16_tp8", "tiny_t5_tp4_plain")

EDITS = {
    "up_lower_clamp_dropped": ("u = tl.minimum(tl.maximum(u, -limit), limit)", "u = tl.minimum(u, limit)"),
    "up_offset_dropped": ("x_ptr + pid_m * stride_xm + inter_size + offs", "x_ptr + pid_m * stride_xm + offs"),
}


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def patched(tag: str):
    """silu_and_mul_clamp_hip.py with EDITS[tag] (a copy: Triton reads a kernel's source from its file)."""
    import_module("sglang.kernels.ops.activation.silu_and_mul_clamp_hip")  # sglang on sys.path, its imports loaded
    return load_by_path("kernels/ops/activation/silu_and_mul_clamp_hip.py", edit=EDITS[tag])


PATHS = list(_real.PATHS) + [
    Path(f"planted.{tag}", lambda t, c, tag=tag: _real.sglang_triton_rocm(t, c, module=patched(tag))) for tag in EDITS
]

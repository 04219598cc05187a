"""wo_a_v41 with two faults V4.1's MXFP8 small-batch kernel can really have, each a one-line edit of a copy
of SGLang's dsv4_wo_a.py: the partial-sum launch handed a dense row stride (8192, the exact-head
layout's) instead of `x.stride(0)`, so on FlashMLA's padded 64-head output rows 1.. read other heads
(the NaN padding, then other tokens); and the scale store's row pitch in the 128x4 layout taken as 4
bytes instead of 16, so wo_b reads each row's block scales from the wrong bytes. The clean kernel runs
beside them on the same case (T = 8, padded, wo_b on MXFP8: one interpreter launch is ~10 s)."""

from __future__ import annotations

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "wo_a_v41.py")
OP = "planted_wo_a_v41"
DTYPE, PRIMARY, OUTPUTS, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.OUTPUTS, _real.TOLERANCE
make_inputs, cost, metrics = _real.make_inputs, _real.cost, _real.metrics
FILE = "kernels/ops/gemm/dsv4_wo_a.py"

DENSE_ROWS = (
    "x, weight, partial, m, x.stride(0), num_warps=4, num_stages=3\n    )\n    return _quantize_partial(partial)",
    "x, weight, partial, m, 8192, num_warps=4, num_stages=3\n    )\n    return _quantize_partial(partial)",
)
SCALE_PITCH = (
    "off = (col // 4) * 512 + row * 16 + col % 4",
    "off = (col // 4) * 512 + row * 4 + col % 4",
)
PLANTED = ("planted.rows_dense", "planted.scale_pitch4")
# the planted paths are MXFP8 outputs: judged by the MXFP8 paths' own ceilings
CEILINGS = {
    **_real.CEILINGS,
    **{f"{p}:calc_diff": _real.CEILINGS["sglang.small_batch_mxfp8:calc_diff"] for p in PLANTED},
    **{f"{p}:worst_row_calc_diff": _real.CEILINGS["sglang.small_batch_mxfp8:worst_row_calc_diff"] for p in PLANTED},
}


def cases():
    return [_real._case("tiny_t8_verify_padded_mxfp8", {"tiny"}, T=8, padded=True, fuse_mxfp8=True)]


def rows_dense(t, case):
    return _real.sglang_small_batch_mxfp8(t, case, module=load_by_path(FILE, edit=DENSE_ROWS))


def scale_pitch4(t, case):
    return _real.sglang_small_batch_mxfp8(t, case, module=load_by_path(FILE, edit=SCALE_PITCH))


_keep = ("fp64", "sglang.small_batch_mxfp8")
PATHS = [p for p in _real.PATHS if p.name in _keep] + [
    Path("planted.rows_dense", rows_dense),
    Path("planted.scale_pitch4", scale_pitch4),
]

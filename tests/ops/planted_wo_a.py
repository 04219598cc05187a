"""wo_a with the faults its load hook and its call site can really have: `_dequant_fp8` copied from
SGLang's deepseek_v4.py with one line changed (the block rows of the scale interleaved rather than
contiguous: `(bn sn)` for `(sn bn)`), and the forward's head slice taken from the wrong end of FlashMLA's
padded 64-head output (the NaN padding read). The clean SGLang paths run beside them."""

from __future__ import annotations

import ast
import functools
from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "wo_a.py")
OP = "planted_wo_a"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs, cost = _real.make_inputs, _real.cost
CASES = ("tiny_t3_tp8_padded", "tiny_t5_tp4")

SHIPPED = '"(sn bn) (sk bk) -> sn bn sk bk"'
PLANTED = '"(bn sn) (sk bk) -> sn bn sk bk"'


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def dequant_fp8(old: str | None = None, new: str | None = None):
    """SGLang's `_dequant_fp8`, its source taken from deepseek_v4.py (importing the module for one pure
    function is ~700 modules) with `old` replaced by `new` where given, compiled against torch."""
    file = require_root() / "sglang" / "srt" / "models" / "deepseek_v4.py"
    text = file.read_text()
    fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "_dequant_fp8")
    src = ast.get_source_segment(text, fn)
    if old is not None:
        assert src.count(old) == 1, f"_dequant_fp8 no longer holds {old}"
        src = src.replace(old, new)
    namespace = {"torch": torch}
    exec(compile(src, f"{file} (_dequant_fp8{', planted' if old else ''})", "exec"), namespace)
    return namespace["_dequant_fp8"]


def scale_rows_interleaved(t, case):
    m = _real._model()
    w = dequant_fp8(SHIPPED, PLANTED)(t["wo_a_fp8"], t["wo_a_scale"]).view(case.params["G"], _real.R, -1)
    return {"y": m._apply_wo_a_bf16_matmul(_real._o(t, case), w, is_decode=True, fast_path=False).contiguous()}


def padded_heads_read(t, case):
    """`o[:, tp_slice, :]` with the slice counted from the end: the rank's heads are the first 8 * G."""
    T, G = case.params["T"], case.params["G"]
    o = t["o_attn"][:, -_real.HEADS_PER_GROUP * G :, :].reshape(T, G, -1)
    return {"y": _real._model()._apply_wo_a_bf16_matmul(o, _real.load_weight(t, case), is_decode=True).contiguous()}


PATHS = list(_real.PATHS) + [
    Path("planted.scale_rows_interleaved", scale_rows_interleaved),
    Path("planted.padded_heads_read", padded_heads_read),
]

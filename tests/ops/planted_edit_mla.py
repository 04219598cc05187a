"""The real sparse MLA decode op, with SGLang's Triton kernel file copied and edited once per path: a fault
that only a row whose scores are all very negative shows, and one that only poisoned slots past a row's
length show (tests/test_edited_sglang.py)."""

from functools import partial
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mla_sparse_decode.py")
OP = "planted_edit_mla"
DTYPE, PRIMARY, TOLERANCE, CEILINGS, OUTPUTS = (
    _real.DTYPE,
    _real.PRIMARY,
    _real.TOLERANCE,
    _real.CEILINGS,
    _real.OUTPUTS,
)
make_inputs, valid_region = _real.make_inputs, _real.valid_region

# the online softmax's running maximum starts at 0, not -1e30: exact whenever some score of the row is above
# 0 (it only shifts the reference), every weight underflowing to 0 when all are far below it
EDIT = ("m_i: tl.float32 = -1e30", "m_i: tl.float32 = 0.0")
# the slots past the length are addressed and their rope loaded (only negative slots are clamped), the softmax
# weight of 0 masking them after the multiplication: 0 x a real row is 0, 0 x NaN is not. One span of the
# file, from the address clamp to the rope load, edited in two places
_FROM = "        safe_indices = tl.where(idx_valid, raw_indices, tl.zeros_like(raw_indices))"
_TO = "            mask=idx_valid[:, None],\n            other=0.0,\n        ).to(tl.float32)"


def _span_edit() -> tuple[str, str]:
    text = (require_root() / "sglang" / _real.TRITON_FILE).read_text(encoding="utf-8")
    start = text.index(_FROM)
    old = text[start : text.index(_TO, start) + len(_TO)]
    new = old.replace("tl.where(idx_valid, raw_indices", "tl.where(raw_indices >= 0, raw_indices").replace(
        "mask=idx_valid[:, None],", "mask=(t_in_bounds & (raw_indices >= 0))[:, None],"
    )
    return old, new


def tail_read(t, case):
    return _real.sglang_triton(t, case, edit=_span_edit())


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags and "emptyrow" not in c.name]


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton")] + [
    Path("edited.max_starts_at_zero", partial(_real.sglang_triton, edit=EDIT)),
    Path("edited.tail_read_then_masked", tail_read),
]

"""The indexer query's rope + Hadamard + FP8 quantization with SGLang's CPU-runnable pieces clean, and
copies of SGLang's sources each given one single-line edit: act_quant's amax floor at 1e-10 (the
per_token_group_quant floor) where the fused kernel's is 1e-4, caught by the scale convention on the
edge case's near-zero token only; and the flat-row rope kernel's forward branch given the inverse's
signs (the rotation backwards), caught by the drift."""

import functools
import tempfile
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "q_indexer_quant.py")
OP = "planted_q_indexer_quant"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
ROPE_PY = "kernels/ops/attention/dsv4/rope.py"

# name -> (SGLang file, the line, its edit)
EDITS = {
    "amax_floor_1e-10": (_real.ACT_QUANT_PY, "amax = tl.maximum(amax, 1e-4)", "amax = tl.maximum(amax, 1e-10)"),
    "rope_backwards": (ROPE_PY, "x_neg = tl.where(even, x_sin, -x_sin)", "x_neg = tl.where(even, -x_sin, x_sin)"),
}


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


@functools.cache
def edited(name: str):
    """The SGLang file with one edit, written to a file (Triton reads a kernel's source from it) and loaded."""
    rel, old, new = EDITS[name]
    src = (require_root() / "sglang" / rel).read_text()
    if src.count(old) != 1:
        raise AssertionError(f"{name}: the line to edit is not in {rel} exactly once")
    file = _P(tempfile.mkdtemp(prefix="planted_q_indexer_quant_")) / f"{_P(rel).stem}_{name.replace('-', '_')}.py"
    file.write_text(src.replace(old, new))
    return load_module(file)


PATHS = [p for p in _real.PATHS if p.name != "sglang.cuda"] + [
    Path(
        "planted.amax_floor_1e-10",
        lambda t, c: _real.sglang_triton_pieces(t, c, quant_module=edited("amax_floor_1e-10")),
    ),
    Path("planted.rope_backwards", lambda t, c: _real.sglang_triton_pieces(t, c, rope_module=edited("rope_backwards"))),
]

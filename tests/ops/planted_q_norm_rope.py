"""The query norm + RoPE op with its CPU-runnable SGLang paths clean, and copies of SGLang's rope.py
each given one single-line edit of the kind that reaches review: the RMS taken over the 448 nope dims
rather than all 512, eps added outside the square root (the padded and tiny rows of the edge case
are where it shows), and the inverse rotation's imaginary part with the wrong sign. Each must be
flagged by the bf16 ceilings; the clean paths must not."""

import functools
import tempfile
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "q_norm_rope.py")
OP = "planted_q_norm_rope"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs = _real.make_inputs

_CTX = (
    "freq_imag = tl.load(freqs_ptr + offs_freq_imag, mask=mask, other=0.0)\n\n"
    "    if IS_INVERSE:\n        out_real = x_real * freq_real + x_imag * freq_imag\n        "
)
# name -> (the line in rope.py, its edit)
EDITS = {
    "norm_over_nope_dims": (
        "rms_inv = tl.rsqrt(sum_sq / HEAD_DIM + eps)",
        "rms_inv = tl.rsqrt(sum_sq / (HEAD_DIM - ROPE_DIM) + eps)",
    ),
    "eps_outside_sqrt": (
        "rms_inv = tl.rsqrt(sum_sq / HEAD_DIM + eps)",
        "rms_inv = 1.0 / (tl.sqrt(sum_sq / HEAD_DIM) + eps)",
    ),
    # the per-token kernel's inverse branch (the batched kernel has the same line: the load before it tells them apart)
    "inverse_imag_sign": (
        _CTX + "out_imag = x_imag * freq_real - x_real * freq_imag",
        _CTX + "out_imag = x_imag * freq_real + x_real * freq_imag",
    ),
}


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


@functools.cache
def edited_rope(name: str):
    """SGLang's rope.py with one edit, written to a file (Triton reads a kernel's source from it) and loaded."""
    old, new = EDITS[name]
    src = (require_root() / "sglang" / _real.ROPE_PY).read_text()
    if src.count(old) != 1:
        raise AssertionError(f"{name}: the line to edit is not in rope.py exactly once")
    file = _P(tempfile.mkdtemp(prefix="planted_q_norm_rope_")) / f"rope_{name}.py"
    file.write_text(src.replace(old, new))
    return load_module(file)


def _norm_rope(name):
    return lambda t, c: _real.sglang_triton_norm_rope(t, c, module=edited_rope(name))


def _rope(name):
    return lambda t, c: _real.sglang_triton_rope(t, c, module=edited_rope(name))


PATHS = [p for p in _real.PATHS if p.name != "sglang.cuda"] + [
    Path("planted.norm_over_nope_dims", _norm_rope("norm_over_nope_dims")),
    Path("planted.eps_outside_sqrt", _norm_rope("eps_outside_sqrt")),
    Path("planted.inverse_imag_sign", _rope("inverse_imag_sign")),
]

"""The SWA KV writer (kernels/k_norm_rope_flashmla.py), its CPU paths clean, and SGLang's reference writer
(`test/kernels/deepseek_v4/k_cache_reference.py`) copied with one line edited, the edits a writer really
has. Each writes bytes its own reading of the layout would accept; SGLang's reader must expose it:
  - scale_row_stride_7: set_k_and_s_torch steps the scale rows by 7 bytes rather than 8 (the pad byte
    forgotten): every token but the first of a page reads its neighbour's exponents;
  - exponent_floor: the UE8M0 exponent rounded down rather than up: values past 448 are clamped;
  - rope_offset_off_by_one: the bf16 rope written one bf16 element late (into the next token's bytes)."""

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "k_norm_rope_flashmla.py")
OP = "planted_kv_writers"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, valid_region, metrics = _real.make_inputs, _real.valid_region, _real.metrics
CASE = "tiny_t3_decode"
REFERENCE = "test/kernels/deepseek_v4/k_cache_reference.py"
EDITS = {
    "scale_row_stride_7": ("loc_token_offset_in_page * (scale_dim + 1)", "loc_token_offset_in_page * (scale_dim)"),
    "exponent_floor": ("ceil_log2 = tl.math.ceil(log2_scale)", "ceil_log2 = tl.math.floor(log2_scale)"),
    "rope_offset_off_by_one": ("+ nope_dim) // 2\n", "+ nope_dim) // 2 + 1\n"),
}


def cases():
    return [c for c in _real.cases() if c.name == CASE]


def edited_reference(fault: str):
    """A copy of SGLang's reference module with the one-line edit `fault`."""
    return load_by_path(REFERENCE, edit=EDITS[fault])


def _planted(fault: str):
    return lambda t, case: _real.sglang_reference(t, case, ref=edited_reference(fault))


def readers_apart(t, case):
    """The oracle's bytes, one token's first value decoded otherwise by the second reader (as a reader that
    assumed another offset for one slot would): only `readers_disagree` can see it."""
    out = _real.oracle_bytes(t, case)
    out["k_triton_reader"][0, 0] += 1.0
    return out


PATHS = (
    [p for p in _real.PATHS if p.name != "sglang.cuda"]
    + [Path(f"planted.{fault}", _planted(fault)) for fault in EDITS]
    + [Path("planted.readers_apart", readers_apart)]
)

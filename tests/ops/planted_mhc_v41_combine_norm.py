"""mhc_v41_combine_norm with the faults its kernels can really have, each in a copy of SGLang's
hc_combine_norm.py with one line changed: the decode kernel's column split made 3 ways for 9..48 rows (5120 / 3
leaves the last 2 columns of each row unwritten), and the MXFP8 epilogue fed the fp32 row instead of the bf16 row
it stores (the quantized bytes then differ from quantizing the stored y). The clean SGLang paths run beside them."""

from __future__ import annotations

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_v41_combine_norm.py")
OP = "planted_mhc_v41_combine_norm"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.OUTPUTS
CEILINGS, UNJUDGED, metrics = _real.CEILINGS, _real.UNJUDGED, _real.metrics
make_inputs, cost, cases = _real.make_inputs, _real.cost, _real.cases
RELPATH = "kernels/ops/layernorm/hc_combine_norm.py"

SPLIT = ("parts = 4 if m <= 8 else (2 if m <= 48 else 1)", "parts = 4 if m <= 8 else (3 if m <= 48 else 1)")
FP32_QUANT = ("y = (value * inv_rms * weight).to(tl.bfloat16)", "y = value * inv_rms * weight")


def split_three_ways(t, case):
    return _real.sglang_triton(t, case, load_by_path(RELPATH, SPLIT))


def quantized_from_fp32(t, case):
    return _real.sglang_triton_mxfp8(t, case, load_by_path(RELPATH, FP32_QUANT))


PATHS = [p for p in _real.PATHS if not p.name.startswith("sglang.model")] + [
    Path("planted.split_three_ways", split_three_ways),
    Path("planted.quantized_from_fp32", quantized_from_fp32),
]

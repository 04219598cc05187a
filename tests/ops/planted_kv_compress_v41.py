"""The V4.1 ratio-1/2 compressor's cache writes (kernels/kv_compress_v41.py), its CPU paths clean, and copies of
SGLang's unfused torch path (`_low_ratio_compress_torch`) with one deliberate error of the kind such a writer has:
  - rope_inverse: the tail rotated by conj(freqs) (a sign convention flipped) before the fake-quant;
  - kv_fake_quant_skipped: the main KV stored without its fp4 (per-16 e4m3) round trip, so the cache holds values
    the model was never trained on, each within the fp8 store's own rounding;
  - kv_scale_pow2: the compressed KV fake-quantized with the indexer's rule (per-16 power-of-two scales) instead
    of its e4m3 scale: a consistent but coarser grid.
The production writers are JIT CUDA only, so the faults are planted in SGLang's CPU-runnable torch path."""

from contextlib import contextmanager
from pathlib import Path as _P
from unittest import mock

from harness.parity.op import Path, import_module, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "kv_compress_v41.py")
OP = "planted_kv_compress_v41"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
OUTPUTS = _real.OUTPUTS
make_inputs, metrics = _real.make_inputs, _real.metrics


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def _planted(name: str):
    @contextmanager
    def patches():
        ds = import_module("sglang.srt.layers.attention.dsv4.dsv41_sparse")
        ff = import_module("sglang.kernels.ops.quantization.fp4_fake_quant")
        if name == "rope_inverse":
            rope_tail = ds.rope_tail
            fault = mock.patch.object(ds, "rope_tail", lambda x, f, r, inverse=False: rope_tail(x, f, r, not inverse))
        elif name == "kv_fake_quant_skipped":
            fault = mock.patch.object(ds, "fake_quant_compressed_kv", lambda x: x)
        else:
            fault = mock.patch.object(ds, "fake_quant_compressed_kv", lambda x: ff.fake_quant_fp4(x, 16))
        with fault:
            yield

    return lambda t, case: _real.run_unfused(t, case, triton_pieces=False, patches=patches)


PATHS = [p for p in _real.PATHS if p.name != "sglang.cuda"] + [
    Path(f"planted.{n}", _planted(n)) for n in ("rope_inverse", "kv_fake_quant_skipped", "kv_scale_pow2")
]

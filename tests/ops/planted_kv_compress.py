"""The c4/c128 compressor's cache write (kernels/kv_compress.py), its CPU path clean, and writers that encode the
oracle's values with one deliberate error of the kind a writer really has. Each writes bytes that its own reading
of the layout would accept; SGLang's readers and the ulp metrics must expose it:
  - pow2_index_scale: the indexer scale rounded up to a power of two (UE8M0, as the main KV's groups are) where
    SGLang stores the raw amax / 448: the values decode consistently but on a grid up to 2x coarser;
  - hadamard_unscaled: the indexer's Hadamard without its 1 / sqrt(128);
  - rope_position_off_by_one: RoPE at seq_len - r + 1 rather than seq_len - r (the block's first token).
The production writer is JIT CUDA only (no CPU path in SGLang), so the faults are planted in the encoding path
that goes through SGLang's readers."""

import math
from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "kv_compress.py")
_kr = load_module(_P(__file__).resolve().parents[2] / "kernels" / "k_norm_rope_flashmla.py")
OP = "planted_kv_compress"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
CASES = ("tiny_c4_main", "tiny_c4_indexer_adversarial")


def cases():
    return [c for c in _real.cases() if c.name in CASES]


def _rows(t, case, shift: int = 0, hadamard_scale: float = 1.0 / math.sqrt(_real.INDEX_D)):
    pooled = _real.pool(t["kv_score"], t["ape"], case)
    y = _kr.exact(pooled, t["norm_weight"], t["freqs_cis"], _real.positions(case) + shift)
    if case.params["target"] == "indexer":
        y = y @ _real.hadamard(_real.INDEX_D).T * hadamard_scale
    return y


def pow2_index_scale(t, case):
    def pow2(y):
        return torch.pow(2.0, torch.ceil(torch.log2(_real.index_scale(y).double()))).float()

    return _real.encode_and_read(t, case, _rows(t, case), index_scale_of=pow2)


def hadamard_unscaled(t, case):
    return _real.encode_and_read(t, case, _rows(t, case, hadamard_scale=1.0))


def rope_position_off_by_one(t, case):
    return _real.encode_and_read(t, case, _rows(t, case, shift=1))


PATHS = [p for p in _real.PATHS if p.name != "sglang.cuda"] + [
    Path("planted.pow2_index_scale", pow2_index_scale),
    Path("planted.hadamard_unscaled", hadamard_unscaled),
    Path("planted.rope_position_off_by_one", rope_position_off_by_one),
]

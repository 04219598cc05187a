"""The V4.1 FP4 index logits with the faults an FP4 reader really has, planted in a copy of SGLang's Triton
decode kernel (fp4_indexer.py, `_fp4_index_logits_tile`, one edit each): the two e2m1 nibbles of a payload
byte swapped (element 2i read from the high nibble), and the ue8m0 block of a payload byte counted in
elements instead of bytes (`offs_i // 32`: bytes 16..31 take block 0's scale, 32..63 block 1's). The clean
SGLang paths run beside them."""

from __future__ import annotations

from pathlib import Path as _P

from harness.parity.op import Path, as_on_a_gpu, guarded_allocations, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "indexer_logits_fp4.py")
OP = "planted_indexer_logits_fp4"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
OUTPUTS, UNJUDGED = _real.OUTPUTS, _real.UNJUDGED
make_inputs, valid_region, metrics, cost = _real.make_inputs, _real.valid_region, _real.metrics, _real.cost
CASES = ("tiny_b2_n3_r2_mixed520", "tiny_prefill_r2")
KERNEL = "kernels/ops/attention/dsv4/fp4_indexer.py"
EDITS = {
    "nibbles_swapped": (
        "    low = _e2m1_decode(pay & 0x0F)\n    high = _e2m1_decode((pay >> 4) & 0x0F)\n",
        "    low = _e2m1_decode((pay >> 4) & 0x0F)\n    high = _e2m1_decode(pay & 0x0F)\n",
    ),
    "scale_block_in_elements": ("    sc_idx = offs_i // 16\n", "    sc_idx = offs_i // 32\n"),
}


def cases():
    return [c for c in _real.cases() if c.name in CASES]


def _planted(fault: str):
    def run(t, case):
        mod = load_by_path(KERNEL, edit=EDITS[fault])
        q, w = _real._fq4_queries(t), _real._bf16_weights(t)
        table = t["k_cache"].reshape(t["k_cache"].shape[0], _real.PAGE_BYTES)
        slots = _real._request_slots(t, case)
        with guarded_allocations(mod) as allocs, as_on_a_gpu():
            logits = mod.fp4_index_logits_decode(q, w, slots, t["seq_lens"].long(), table, _real.PAGE)
        return {"logits": logits.contiguous(), **allocs.result()}

    return run


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.torch", "sglang.triton_decode")] + [
    Path(f"planted.{fault}", _planted(fault)) for fault in EDITS
]

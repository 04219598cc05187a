"""The real indexer-logits op with SGLang's SM120 torch fallback fed the bugs a kernel really has: one
token's UE8M0 scale one step off, one page of the table off by one, the last (partial) page of each
row dropped, the last head dropped; and one that only the tail shows (seq_lens ignored)."""

import functools
from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "indexer_logits.py")
OP = "planted_indexer_logits"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, valid_region, metrics = _real.make_inputs, _real.valid_region, _real.metrics
CASES = ("tiny_b3_mixed300",)
PAGE = _real.PAGE


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def _sm120_fallback():
    """SGLang's fp8_paged_mqa_logits_torch_sm120 compiled from its source file: the code of the clean
    path, without each planted worker paying for the indexer module's import chain."""
    name = "fp8_paged_mqa_logits_torch_sm120"
    return _real.indexer_function(name)


def _clean(t, case):
    return _real._sglang_call(_sm120_fallback(), t)


def _top_slot(t, case) -> tuple[int, int]:
    """(page, offset) of row 0's highest exact logit: the token a fault there costs most."""
    logits = _real.oracle({k: v.cpu() for k, v in t.items()}, case)["logits"][0]
    pos = int(logits.argmax())
    return int(t["page_table"][0, pos // PAGE]), pos % PAGE


def scale_off_by_one(t, case):
    """That token's fp32 scale one UE8M0 step (x2) too large: its exponent field + 1."""
    page, off = _top_slot(t, case)
    cache = t["kv_cache"].clone()
    scales = cache.view(cache.shape[0], -1)[:, PAGE * _real.DIM :].view(torch.int32)  # a view of the clone
    scales[page, off] += 1 << 23
    return _clean({**t, "kv_cache": cache}, case)


def page_off_by_one(t, case):
    """The page holding that token read from the next physical page of the pool."""
    table = t["page_table"].clone()
    page, _ = _top_slot(t, case)
    table[0][table[0] == page] = (page + 1) % t["kv_cache"].shape[0]
    return _clean({**t, "page_table": table}, case)


def partial_page_dropped(t, case):
    """Lengths rounded down to whole pages (floor instead of ceil of seq_len / 64)."""
    return _clean({**t, "seq_lens": t["seq_lens"] // PAGE * PAGE}, case)


def last_head_dropped(t, case):
    """A head loop that stops one short: head 63 never contributes."""
    weights = t["weights"].clone()
    weights[:, -1] = 0.0
    return _clean({**t, "weights": weights}, case)


def seq_lens_ignored(t, case):
    """Every row scored over its whole page table: only the tail differs (real logits, not -inf)."""
    full = torch.full_like(t["seq_lens"], _real.max_seq_len(t))
    return _clean({**t, "seq_lens": full}, case)


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.torch_sm120", "sglang.torch")] + [
    Path("planted.scale_off_by_one", scale_off_by_one),
    Path("planted.page_off_by_one", page_off_by_one),
    Path("planted.partial_page_dropped", partial_page_dropped),
    Path("planted.last_head_dropped", last_head_dropped),
    Path("planted.seq_lens_ignored", seq_lens_ignored),
]

"""The real top-k op with SGLang's torch top-k fed the bugs a top-k really has: one token short (k-1),
offset and page swapped in the slot value, the lengths ignored, the page table read one page off,
the slots past a short row's length left stale instead of -1."""

import functools
from pathlib import Path as _P

import torch

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "topk_transform.py")
_logits = load_module(_P(__file__).resolve().parents[2] / "kernels" / "indexer_logits.py")
OP = "planted_topk_transform"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, metrics = _real.make_inputs, _real.metrics
CASES = ("tiny_b4_mixed2048_garbage", "tiny_b3_equal4096_bf16ties")
K, PAGE, BITS = _real.TOPK, _real.PAGE, _real.PAGE_BITS


def cases():
    return [c for c in _real.cases() if c.name in CASES]


@functools.cache
def _torch_topk():
    """SGLang's topk_transform_pytorch_vectorized compiled from its source file: the clean path's code,
    without each planted worker paying for the indexer module's import chain."""
    name = "topk_transform_pytorch_vectorized"
    return _logits.indexer_function(name)


def _call(t, k=K, **changed):
    t = {**t, **changed}
    B = t["scores"].shape[0]
    out = torch.full((B, k), -2, dtype=torch.int32, device=t["scores"].device)
    raw = torch.full_like(out, -2)
    _torch_topk()(t["scores"], t["seq_lens"], t["page_table"], out, PAGE, raw)
    return {"page_indices": out, "raw_indices": raw}


def k_minus_one(t, case):
    """A selection of k - 1, the last slot left empty."""
    got = _call(t, k=K - 1)
    return {name: torch.nn.functional.pad(v, (0, 1), value=-1) for name, v in got.items()}


def offset_page_swap(t, case):
    """The slot value packed the wrong way round: (offset << 6) | page."""
    got = _call(t)
    p = got["page_indices"]
    swapped = ((p & (PAGE - 1)) << BITS) | (p >> BITS)
    return {**got, "page_indices": torch.where(p >= 0, swapped, p)}


def lengths_ignored(t, case):
    """Every row ranked over the whole logits width, the tail included."""
    return _call(t, seq_lens=torch.full_like(t["seq_lens"], t["scores"].shape[1]))


def page_off_by_one(t, case):
    """Position t looked up in the page table at t // 64 + 1."""
    table = t["page_table"]
    return _call(t, page_table=torch.cat([table[:, 1:], torch.zeros_like(table[:, :1])], 1))


def stale_tail(t, case):
    """A short row's slots past its length not reset to -1: they keep the previous step's values
    (here, the row's own first slots again)."""
    got = _call(t)
    for b, n in enumerate(t["seq_lens"].tolist()):
        if n < K:
            for v in got.values():
                v[b, n:] = v[b, : K - n] if n >= K - n else v[b, 0]
    return got


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.torch")] + [
    Path("planted.k_minus_one", k_minus_one),
    Path("planted.offset_page_swap", offset_page_swap),
    Path("planted.lengths_ignored", lengths_ignored),
    Path("planted.page_off_by_one", page_off_by_one),
    Path("planted.stale_tail", stale_tail),
]

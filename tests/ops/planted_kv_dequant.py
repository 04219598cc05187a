"""The real KV dequant op, its SGLang paths clean, and SGLang's PyTorch gather fed the bugs a gather +
dequant really has: one token's scale read from its neighbour's slot, the rope bytes read as an eighth
fp8 group, one token's page off by one. Each must be flagged; the clean paths must not be."""

from pathlib import Path as _P

import torch

from harness.parity.op import Path, dsv4, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "kv_dequant.py")
OP = "planted_kv_dequant"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, valid_region, metrics = _real.make_inputs, _real.valid_region, _real.metrics
CASES = ("tiny_b3_c4x64_p64_scale0", "tiny_b2_c4x64_p64_neg1")


def cases():
    return [c for c in _real.cases() if c.name in CASES]


def _scale_offset(slot: int, page: int) -> tuple[int, int]:
    """(page, byte offset in the page) of a slot's 8 scale bytes."""
    pg, off = divmod(slot, page)
    return pg, page * dsv4.TOKEN_DATA + off * 8


def scale_from_neighbour(t, case):
    """The first gathered token whose neighbour slot has other (non-zero) scales gets those scales,
    as a kernel that addressed the scale row of `offset + 1` would read them."""
    page, k = case.params["page"], t["k_cache"].clone()
    for slot in t["indices"].flatten().tolist():
        if slot < 0:
            continue
        neighbour = slot + 1 if (slot + 1) % page else slot - 1
        (pg, a), (npg, b) = _scale_offset(slot, page), _scale_offset(neighbour, page)
        mine, theirs = k[pg, a : a + 7], k[npg, b : b + 7]
        if bool(((mine != theirs) & (mine > 0) & (theirs > 0)).any()):
            k[pg, a : a + 7] = theirs
            return _real.sglang_torch_gather({**t, "k_cache": k}, case)
    raise AssertionError("no token with a differing neighbour")


def rope_as_fp8(t, case):
    """The rope bytes read as an eighth 64-value fp8 group, scaled by the pad byte (a loop over 8 groups
    instead of 7)."""
    out = _real.sglang_torch_gather(t, case)
    page = case.params["page"]
    slots = t["indices"].flatten().clamp(min=0).long()
    pg, off = slots // page, slots % page
    data = t["k_cache"][pg[:, None], off[:, None] * dsv4.TOKEN_DATA + dsv4.NOPE + torch.arange(dsv4.ROPE)]
    pad = t["k_cache"][pg, page * dsv4.TOKEN_DATA + off * 8 + 7].double()
    fp8 = data.contiguous().view(torch.float8_e4m3fn).double() * torch.pow(2.0, pad - 127)[:, None]
    out["kv"][:, dsv4.NOPE :] = fp8.to(out["kv"].dtype)
    return out


def page_off_by_one(t, case):
    """The first gathered token read from the same offset of the next page."""
    idx = t["indices"].clone()
    flat = idx.view(-1)
    i = int((flat >= 0).nonzero()[0])
    pool = t["k_cache"].shape[0] * case.params["page"]
    flat[i] = (flat[i] + case.params["page"]) % pool
    return _real.sglang_torch_gather({**t, "indices": idx}, case)


PATHS = [p for p in _real.PATHS] + [
    Path("planted.scale_from_neighbour", scale_from_neighbour),
    Path("planted.rope_as_fp8", rope_as_fp8),
    Path("planted.page_off_by_one", page_off_by_one),
]

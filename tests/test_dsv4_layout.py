"""The V4 paged FP8 cache as harness/dsv4.py writes it, read back by our exact dequant and by
SGLang's own gather-and-dequant: the layout the oracle assumes is the one SGLang reads."""

import torch

from harness.parity import dsv4
from tests.conftest import needs_sglang


def test_page_sizes_match_sglang_constants():
    assert dsv4.page_bytes(256) == 149760
    assert dsv4.page_bytes(64) == 37440
    assert dsv4.page_bytes(2) == 1728


def _cache(n=512, page=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(n, 512, generator=gen) * 3
    nope8, scales, rope = dsv4.quantize_v4(k)
    return k, nope8, scales, rope, dsv4.pack_pages(nope8, scales, rope, page)


def test_pack_then_dequantize_is_exact():
    k, nope8, scales, rope, buf = _cache()
    exact = dsv4.dequantize_pages(buf, 256)
    scale = torch.pow(2.0, scales.double() - 127).repeat_interleave(64, dim=1)
    assert torch.equal(exact[:, :448], nope8.double() * scale)
    assert torch.equal(exact[:, 448:], rope.double())
    # fp8 e4m3 keeps 3 mantissa bits: within half a step (1/16 relative) of the input, or half the
    # smallest subnormal step (2^-9 of the group's scale) for small values; and no overflow
    err = (exact[:, :448] - k[:, :448].double()).abs()
    assert err.le(k[:, :448].double().abs() / 16 + scale * 2**-10).all()
    assert nope8.float().abs().max() <= 448


def test_scale_is_the_smallest_power_of_two_that_fits():
    _, _, scales, _, _ = _cache()
    k, *_ = _cache()
    amax = k[:, :448].reshape(-1, 7, 64).abs().amax(-1).double()
    e = scales.double() - 127
    assert (amax <= 448 * 2**e).all() and (amax > 448 * 2 ** (e - 1)).all()


def test_sglang_reads_the_layout_we_write():
    needs_sglang()
    from harness.workers.sglang_src import import_module

    mod = import_module("sglang.kernels.ops.attention.flash_mla_sm120")
    _, _, _, _, buf = _cache(n=512, page=256, seed=1)
    idx = torch.tensor([[0, 7, 255, 256, 511, -1]], dtype=torch.int32)
    got = mod._gather_and_dequant(dsv4.paged_view(buf, 256), idx.clamp(min=0), 256).double()[0]
    want = dsv4.dequantize_pages(buf, 256)[idx[0].clamp(min=0).long()].to(torch.bfloat16).double()
    assert torch.equal(got, want)

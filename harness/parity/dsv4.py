"""DeepSeek-V4 data layouts, written independently of SGLang's writers so that the oracle does not
share a bug with the code under test.

The V4 paged FP8 KV cache (`KVLayout.V4`): a page of `page_size` tokens holds first the data section,
`page_size x 576 B` (per token 448 fp8-e4m3 "nope" values then 64 bf16 "rope" values), then the
scale section, `page_size x 8 B` (per token 7 UE8M0 exponents, one per 64 nope values, value
2^(byte-127), and one pad byte); the page is padded to a multiple of 576 B.
"""

from __future__ import annotations

import math

import torch

NOPE, ROPE, DIM = 448, 64, 512
TOKEN_DATA = NOPE + 2 * ROPE  # 576 B
TOKEN_BYTES = TOKEN_DATA + 8  # 584 B: data plus the scale row
SCALE_GROUP = 64
FP8_MAX = 448.0


def page_bytes(page_size: int) -> int:
    return math.ceil(page_size * TOKEN_BYTES / TOKEN_DATA) * TOKEN_DATA


def quantize_v4(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k [N, 512] float -> (nope fp8 [N, 448], scale exponent bytes uint8 [N, 7], rope bf16 [N, 64]).

    The scale is the smallest power of two that keeps |nope| within e4m3's 448 (SGLang's writer rule
    `ceil(log2(amax / 448))`)."""
    n = k.shape[0]
    nope = k[:, :NOPE].double().reshape(n, NOPE // SCALE_GROUP, SCALE_GROUP)
    amax = nope.abs().amax(-1).clamp(min=1e-30)
    exp = torch.ceil(torch.log2(amax / FP8_MAX)).clamp(-127, 127)
    q8 = (nope / torch.pow(2.0, exp)[..., None]).to(torch.float8_e4m3fn).reshape(n, NOPE)
    return q8, (exp + 127).to(torch.uint8), k[:, NOPE:].to(torch.bfloat16)


def pack_pages(nope8: torch.Tensor, scale_bytes: torch.Tensor, rope: torch.Tensor, page_size: int) -> torch.Tensor:
    """Pack N tokens (N a multiple of page_size) into a uint8 buffer [N // page_size, page_bytes]."""
    n = nope8.shape[0]
    if n % page_size:
        raise ValueError(f"{n} tokens is not a whole number of {page_size}-token pages")
    pages = n // page_size
    data = torch.cat([nope8.view(torch.uint8), rope.contiguous().view(torch.uint8)], dim=1)
    scales = torch.zeros(n, 8, dtype=torch.uint8)
    scales[:, : NOPE // SCALE_GROUP] = scale_bytes
    buf = torch.zeros(pages, page_bytes(page_size), dtype=torch.uint8)
    buf[:, : page_size * TOKEN_DATA] = data.reshape(pages, page_size * TOKEN_DATA)
    buf[:, page_size * TOKEN_DATA : page_size * TOKEN_BYTES] = scales.reshape(pages, page_size * 8)
    return buf


def pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2**exponent in float64, built from its bits: exact on every device (CUDA's pow is not)."""
    return ((exponent.long() + 1023) << 52).view(torch.float64)


def dequantize_pages(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """Exact dequantization of every token of a packed buffer: [pages * page_size, 512] float64."""
    pages = buf.shape[0]
    n = pages * page_size
    data = buf[:, : page_size * TOKEN_DATA].reshape(n, TOKEN_DATA)
    scales = buf[:, page_size * TOKEN_DATA : page_size * TOKEN_BYTES].reshape(n, 8)[:, : NOPE // SCALE_GROUP]
    nope = data[:, :NOPE].contiguous().view(torch.float8_e4m3fn).double()
    scale = pow2(scales.long() - 127)
    nope = (nope.reshape(n, -1, SCALE_GROUP) * scale[..., None]).reshape(n, NOPE)
    rope = data[:, NOPE:].contiguous().view(torch.bfloat16).double()
    return torch.cat([nope, rope], dim=1)


def paged_view(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """The production view SGLang passes around: [pages, page_size, 1, 584] fp8 over the raw bytes,
    strided so that stride(0) is the padded page size and token t starts at byte t*584 of its page
    (the kernels read the scale section through stride(0) and page_size*576, not through this view)."""
    return buf.view(torch.float8_e4m3fn).as_strided(
        (buf.shape[0], page_size, 1, TOKEN_BYTES), (buf.shape[1], TOKEN_BYTES, TOKEN_BYTES, 1)
    )

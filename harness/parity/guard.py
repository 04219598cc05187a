"""Guard bands around the buffers a path writes into: writes outside a tensor's rows are invisible when the
output is exactly sized (and, under Triton's interpreter, overwritten by the next program in order). A path
that hands SGLang an `out=` buffer takes it from `guarded(...)`: the buffer sits inside a larger allocation
filled with a sentinel no kernel writes, BAND elements before and after it and, where the layout has a row
stride, between its rows. After the call, `Guarded.stray()` counts the sentinel elements that changed; the
path returns it as the output STRAY (`guard.result`), and the engine judges it as `stray_writes`, ceiling 0.

    g = op.guarded((rows, cols), torch.bfloat16, device, row_pad=8)
    fn(..., out=g.view)
    return {"y": g.view, **g.result()}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.results import metrics as M

STRAY = M.STRAY_WRITES  # the output a guarded path returns: how many sentinel elements its call changed
BAND = 256  # elements before and after the buffer (a whole tile of a row past the end, or before it)
# per dtype, a value no kernel writes: a NaN payload for floats, an extreme for integers
_SENTINEL_BITS = {2: -0x3E5B, 4: -0x3E5B3E5B, 1: -0x5B, 8: -0x3E5B3E5B3E5B3E5B}


@dataclass
class Guarded:
    view: torch.Tensor  # what the path hands to SGLang
    _whole: torch.Tensor  # the allocation, as integers of the element size
    _mask: torch.Tensor  # True where the allocation is a sentinel (outside the view)
    _fill: int

    def stray(self) -> int:
        """Sentinel elements the call changed."""
        return int(((self._whole != self._fill) & self._mask).sum())

    def result(self) -> dict[str, torch.Tensor]:
        return {STRAY: torch.tensor([self.stray()], dtype=torch.int64)}


def _int_dtype(size: int) -> torch.dtype:
    return {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]


def guarded(shape: tuple[int, ...], dtype: torch.dtype, device, row_pad: int = 0) -> Guarded:
    """A tensor of `shape` and `dtype` on `device`, inside sentinels: BAND elements before and after, and
    `row_pad` between rows (its stride(0) is then shape[-1] + row_pad: a path that assumes a dense row
    reads or writes the pad)."""
    size = torch.empty((), dtype=dtype).element_size()
    rows = 1
    for n in shape[:-1]:
        rows *= n
    cols = shape[-1] if shape else 1
    pitch = cols + row_pad
    total = BAND + rows * pitch + BAND
    fill = _SENTINEL_BITS[size]
    whole = torch.full((total,), fill, dtype=_int_dtype(size), device=device)
    body = whole[BAND : BAND + rows * pitch].view(rows, pitch)
    mask = torch.ones(total, dtype=torch.bool, device=device)
    mask[BAND : BAND + rows * pitch].view(rows, pitch)[:, :cols] = False
    body[:, :cols] = 0
    view = body[:, :cols].view(dtype).reshape(*shape) if row_pad == 0 else body[:, :cols].view(dtype).view(*shape)
    return Guarded(view=view, _whole=whole, _mask=mask, _fill=fill)

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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

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


class Allocations:
    """The buffers SGLang allocates for itself inside a path's call, each in guard bands (`guarded_allocations`).
    `empty` buffers start poisoned (NaN for floats, the sentinel for integers) rather than zero, so that an
    element the kernel should write and does not shows in the output."""

    def __init__(self) -> None:
        self.made: list[Guarded] = []

    def new(self, shape: tuple[int, ...], dtype: torch.dtype, device, fill: float | None) -> torch.Tensor:
        g = guarded(tuple(shape), dtype, device)
        if fill is not None:
            g.view.fill_(fill)
        elif dtype.is_floating_point:
            g.view.fill_(float("nan"))
        else:
            g.view.view(_int_dtype(g.view.element_size())).fill_(g._fill)
        self.made.append(g)
        return g.view

    def like(self, t: torch.Tensor, fill: float | None = None) -> torch.Tensor:
        return self.new(tuple(t.shape), t.dtype, t.device, fill)

    def result(self) -> dict[str, torch.Tensor]:
        return {STRAY: torch.tensor([sum(g.stray() for g in self.made)], dtype=torch.int64)}


class _GuardedTorch:
    """`torch` as one SGLang module sees it inside `guarded_allocations`: empty/zeros/full (and *_like) with a
    shape, a dtype and a device only are guarded; everything else is torch's."""

    def __init__(self, allocs: Allocations) -> None:
        self._allocs = allocs

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def _make(self, real, size: tuple, fill: float | None, dtype=None, device=None, **other):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
        if other or not shape or any(int(n) == 0 for n in shape):
            return real(*size, dtype=dtype, device=device, **other)
        return self._allocs.new(tuple(int(n) for n in shape), dtype or torch.get_default_dtype(), device or "cpu", fill)

    def empty(self, *size, **kw):
        return self._make(torch.empty, size, None, **kw)

    def zeros(self, *size, **kw):
        return self._make(torch.zeros, size, 0.0, **kw)

    def full(self, size, fill_value, **kw):
        if isinstance(fill_value, torch.Tensor):
            return torch.full(size, fill_value, **kw)
        return self._make(lambda *s, **k: torch.full(s, fill_value, **k), tuple(size), float(fill_value), **kw)

    def empty_like(self, t: torch.Tensor, **kw):
        return torch.empty_like(t, **kw) if kw else self._allocs.like(t)

    def zeros_like(self, t: torch.Tensor, **kw):
        return torch.zeros_like(t, **kw) if kw else self._allocs.like(t, 0.0)


@contextlib.contextmanager
def guarded_allocations(*modules: ModuleType) -> Iterator[Allocations]:
    """Within it, the tensors these SGLang modules allocate with `torch.empty/zeros/full` are guarded: a path
    whose SGLang function allocates its own outputs (no `out=`) checks them all the same, returning
    `allocs.result()` beside its outputs. Only what the module itself calls through its `torch` is seen."""
    allocs = Allocations()
    saved = [(m, m.torch) for m in modules]
    for m in modules:
        m.torch = _GuardedTorch(allocs)
    try:
        yield allocs
    finally:
        for m, real in saved:
            m.torch = real

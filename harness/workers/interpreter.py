"""Where Triton's interpreter computes unlike a GPU, put right for the duration of a call.

Seen with Triton 3.8 (triton/runtime/interpreter.py): a `tl.dot` of bf16 operands multiplies their raw 16-bit
patterns (a dot of ~1e-2 comes out ~1e10); fp32 -> bf16 truncates (`cast_impl` passes no rounding mode) where
a GPU rounds to nearest even; fp32 -> e4m3 loses the carry of a rounding into the exponent (127 -> 64). Within
`as_on_a_gpu()` bf16 dot operands are widened to fp32 exactly (a bf16 MMA multiplies exactly and accumulates
in fp32) and those two conversions are done by torch, to nearest even. Outside the interpreter it does nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from unittest import mock

import torch


@contextlib.contextmanager
def as_on_a_gpu() -> Iterator[None]:
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as it

    convert = it._convert_float
    real_dot = it.InterpreterBuilder.create_dot
    nearest = (None, it._ir.ROUNDING_MODE.RTNE)

    def convert_rn(data, src, dst, rounding):
        if src == tl.float32 and dst in (tl.bfloat16, tl.float8e4nv) and rounding in nearest:
            x = torch.from_numpy(np.ascontiguousarray(data).view(np.float32).copy())
            if dst == tl.bfloat16:
                return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).reshape(data.shape)
            return x.to(torch.float8_e4m3fn).view(torch.uint8).numpy().reshape(data.shape)
        return convert(data, src, dst, rounding)

    def widened(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        return it.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(self, a, b, d, *rest):
        return real_dot(self, widened(a), widened(b), d, *rest)

    with (
        mock.patch.object(it, "_convert_float", convert_rn),
        mock.patch.object(it.InterpreterBuilder, "create_dot", dot),
    ):
        yield


class _AsCuda(torch.Tensor):
    """A CPU tensor that answers `is_cuda` True: SGLang's wrappers assert it (or take their CUDA branch on
    it), and under the interpreter the Triton kernels then run on the CPU memory."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def as_cuda(x: torch.Tensor | None) -> torch.Tensor | None:
    """x as SGLang's CUDA-only code must see it: itself on a GPU (or outside the interpreter), else a view that
    answers `is_cuda` True."""
    if x is None or x.is_cuda or os.environ.get("TRITON_INTERPRET") != "1":
        return x
    return x.as_subclass(_AsCuda)


def plain(x: torch.Tensor) -> torch.Tensor:
    """An `as_cuda` view back to a plain tensor (for the outputs a path returns); anything else unchanged."""
    return x.as_subclass(torch.Tensor) if isinstance(x, _AsCuda) else x

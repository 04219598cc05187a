"""A toy op whose path compiles a Triton kernel for sm_120a on any machine (Triton's compiler needs no
GPU), as the real paths do at their first call on a GPU: the compiled kernel lands in Triton's cache,
which a second run must find."""

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from harness.parity.op import ORACLE, Case, Path

OP = "toy_compile"
DTYPE = "fp32"
PRIMARY = "y"
TOLERANCE = (1e-6, 1e-6)


def cases():
    return [Case("n64", {"n": 64}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], generator=gen)}


def double(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=i < n) * 2, mask=i < n)


def compiled(t, case):
    # JITFunction, not @triton.jit: under the interpreter the decorator would not compile
    src = ASTSource(JITFunction(double), {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 64})
    triton.compile(src, target=GPUTarget("cuda", 120, 32))
    return {"y": t["x"] * 2}


PATHS = [
    Path(ORACLE, lambda t, c: {"y": t["x"].double() * 2}, golden=True),
    Path("compiled", compiled),
]

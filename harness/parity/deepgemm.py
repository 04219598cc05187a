"""DeepGEMM as a golden: loaded once per worker, and probed before it is trusted.

The prebuilt sgl-deep-gemm library works only with the torch it was built against: elsewhere it
either fails to load or fails every call (e.g. "dim == 2 or dim == 3" from its layout checks with
torch 2.11). Such a host cannot run the golden at all, which is a skip with the reason, not a
failure of the op; a call that fails after the probe passed is a real failure and is recorded so.
There, tools/deepgemm-build's bundle builds DeepGEMM from source against the host's torch.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

from harness.workers.environment import Unavailable


@lru_cache(maxsize=1)
def _probe() -> ModuleType | str:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        return f"torch is not importable ({exc})"
    if not torch.cuda.is_available():
        return "DeepGEMM needs a CUDA GPU"
    try:
        import deep_gemm
    except Exception as exc:  # an ABI mismatch surfaces as ImportError, OSError or RuntimeError
        return (
            f"deep_gemm cannot be loaded with torch {torch.__version__} ({type(exc).__name__}: {exc}); "
            "tools/deepgemm-build builds it from source for this torch"
        )
    # one small BF16 GEMM that every DeepGEMM build with SM90/SM100/SM120 kernels has
    try:
        a = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
        d = torch.empty(128, 128, device="cuda", dtype=torch.bfloat16)
        deep_gemm.bf16_gemm_nt(a, b, d)
        torch.cuda.synchronize()
        ref = a.float() @ b.float().T
        err = float((d.float() - ref).norm() / ref.norm())
    except Exception as exc:
        return (
            f"deep_gemm {getattr(deep_gemm, '__version__', '?')} does not run with torch {torch.__version__} "
            f"(probe bf16_gemm_nt: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "it needs the torch it was built against"
        )
    if not err < 1e-2:
        return f"deep_gemm's probe GEMM is wrong on this host (relative error {err:.3g})"
    return deep_gemm


def load() -> ModuleType:
    """The deep_gemm module, or Unavailable with why it cannot serve as a golden here."""
    found = _probe()
    if isinstance(found, str):
        raise Unavailable(found)
    return found

"""Triton kernels planted for the SM120 audit: one that fits in SM120's 101376 B of shared memory,
one that needs 128 KiB, and an autotuned one whose every config is too big for SM120 (the autotuner
would pick one of them on a GPU with more shared memory, and fail on an RTX PRO 6000)."""

import torch
import triton
import triton.language as tl

from harness.parity.op import ORACLE, Case, Path, interpreted, keep_first_config

OP = "planted_smem"
DTYPE = "bf16"
PRIMARY = "c"
TOLERANCE = (1e-2, 1e-2)


def cases():
    return [Case("m256_n256_k128", {"M": 256, "N": 256, "K": 128}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    p = case.params
    return {
        "a": torch.randn(p["M"], p["K"], generator=gen).to(torch.bfloat16),
        "b": torch.randn(p["K"], p["N"], generator=gen).to(torch.bfloat16),
    }


@triton.jit
def matmul_kernel(a, b, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        x = tl.load(a + rm[:, None] * K + (k + rk)[None, :])
        y = tl.load(b + (k + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(x, y)
    tl.store(c + rm[:, None] * N + rn[None, :], acc)


# the same kernel, autotuned over configs that all need more than SM120's shared memory
tuned_matmul_kernel = triton.autotune(
    configs=[
        triton.Config({"BM": 256, "BN": 256, "BK": 128}, num_warps=8, num_stages=2),
        triton.Config({"BM": 256, "BN": 256, "BK": 128}, num_warps=8, num_stages=3),
        triton.Config({"BM": 256, "BN": 128, "BK": 256}, num_warps=8, num_stages=2),
    ],
    key=["M", "N", "K"],
)(matmul_kernel)


def _launch(t, block):
    M, K = t["a"].shape
    N = t["b"].shape[1]
    c = torch.empty(M, N, dtype=torch.float32, device=t["a"].device)
    matmul_kernel[(M // block[0], N // block[1])](t["a"], t["b"], c, M, N, K, BM=block[0], BN=block[1], BK=block[2])
    return {"c": c}


def fits(t, case):
    return _launch(t, (64, 64, 64))  # 16 KiB


def smem_128k(t, case):
    return _launch(t, (256, 256, 128))  # 128 KiB


def every_config_too_big(t, case):
    if interpreted():
        keep_first_config(tuned_matmul_kernel)
    M, K = t["a"].shape
    N = t["b"].shape[1]
    c = torch.empty(M, N, dtype=torch.float32, device=t["a"].device)
    tuned_matmul_kernel[lambda meta: (M // meta["BM"], N // meta["BN"])](t["a"], t["b"], c, M, N, K)
    return {"c": c}


PATHS = [
    Path(ORACLE, lambda t, c: {"c": t["a"].double() @ t["b"].double()}, golden=True),
    Path("fits", fits),
    Path("smem_128k", smem_128k),
    Path("every_config_too_big", every_config_too_big),
]


@triton.jit
def fill_kernel(out, N, BLOCK: tl.constexpr, DTYPE: tl.constexpr):
    """A dtype as a constexpr (as SGLang's fused MoE passes its compute_type): the audit must hand
    Triton a dtype back, not its name."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + offs, tl.zeros((BLOCK,), dtype=DTYPE), mask=offs < N)

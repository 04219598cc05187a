"""A planted TileLang kernel for the SM120 audit: the shape of SGLang's mHC split-k pre-norm GEMM
(`mhc_pre_gemm_sqrsum_splitk_stage_0`): per block, `token_block` tokens times one split of the hidden
dimension, staged through shared memory `hidden_block` columns at a time, two stages deep. The
original SM120 pull request found that `hidden_block=256` overflows SM120's shared memory and moved
SM120 to 128."""

import functools

import tilelang
import tilelang.language as T


@tilelang.jit(pass_configs={tilelang.PassConfigKey.TL_DISABLE_WARP_SPECIALIZED: True})
def splitk_gemm_sqrsum(hc_hidden_size: int, split_k: int, token_block: int = 32, hidden_block: int = 256):
    num_tokens = T.dynamic("num_tokens")
    split_size = hc_hidden_size // split_k

    @T.prim_func
    def kernel(
        x: T.Tensor((num_tokens, hc_hidden_size), T.bfloat16),
        fn: T.Tensor((32, hc_hidden_size), T.float32),
        out: T.Tensor((split_k, num_tokens, 32), T.float32),
    ):
        with T.Kernel(T.ceildiv(num_tokens, token_block), split_k, threads=128) as (px, bz):
            acc = T.alloc_fragment((token_block, 32), T.float32)
            T.clear(acc)
            for pz in T.Pipelined(split_size // hidden_block, num_stages=2):
                xs = T.alloc_shared((token_block, hidden_block), T.bfloat16)
                fs = T.alloc_shared((32, hidden_block), T.float32)
                xf = T.alloc_shared((token_block, hidden_block), T.float32)
                T.copy(x[px * token_block, bz * split_size + pz * hidden_block], xs)
                T.copy(fn[0, bz * split_size + pz * hidden_block], fs)
                T.copy(xs, xf)
                T.gemm(xf, fs, acc, transpose_B=True)
            T.copy(acc, out[bz, px * token_block, 0])

    return kernel


@functools.cache
def splitk_stage_0_factory(hc_hidden_size: int, split_k: int, token_block: int = 32, hidden_block: int = 256):
    """The same kernel as SGLang writes it: defined inside a cached factory whose arguments are the block
    sizes, its shapes closed over (the audit has to call the factory again to lower it)."""
    num_tokens = T.dynamic("num_tokens")
    split_size = hc_hidden_size // split_k

    @tilelang.jit(pass_configs={tilelang.PassConfigKey.TL_DISABLE_WARP_SPECIALIZED: True})
    def splitk_stage_0(
        x: T.Tensor[(num_tokens, hc_hidden_size), T.bfloat16],
        fn: T.Tensor[(32, hc_hidden_size), T.float32],
        out: T.Tensor[(split_k, num_tokens, 32), T.float32],
    ):
        with T.Kernel(T.ceildiv(num_tokens, token_block), split_k, threads=128) as (px, bz):
            acc = T.alloc_fragment((token_block, 32), T.float32)
            T.clear(acc)
            for pz in T.Pipelined(split_size // hidden_block, num_stages=2):
                xs = T.alloc_shared((token_block, hidden_block), T.bfloat16)
                fs = T.alloc_shared((32, hidden_block), T.float32)
                xf = T.alloc_shared((token_block, hidden_block), T.float32)
                T.copy(x[px * token_block, bz * split_size + pz * hidden_block], xs)
                T.copy(fn[0, bz * split_size + pz * hidden_block], fs)
                T.copy(xs, xf)
                T.gemm(xf, fs, acc, transpose_B=True)
            T.copy(acc, out[bz, px * token_block, 0])

    return splitk_stage_0

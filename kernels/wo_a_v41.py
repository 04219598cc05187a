"""DeepSeek-V4.1 attention output, first half: wo_a at TP4 (G = 2 groups a rank), the grouped low-rank
projection of the attention output (after its inverse RoPE) to o_lora_rank per group,

    y[t, g, r] = sum_d o[t, g, d] * W[g, r, d]        o [T, 2, 4096] bf16, W [2, 1024, 4096] bf16

the contraction of kernels/wo_a.py (V4's wo_a), on the one shape V4.1's fast kernels take.

Call site (srt/models/deepseek_v4.py): `MQALayer.forward` views the attention output `o.view(T,
n_local_groups, -1)` and calls `_apply_wo_a_bf16_matmul(o, wo_a, is_decode=..., is_target_verify=...,
is_prefill=is_extend_without_speculative, fast_path=self.is_dsv41, fuse_mxfp8_quant=...)`, wo_a being
the BF16 parameter viewed [G, o_lora_rank, -1] (on SM120 `SGLANG_OPT_FP8_WO_A_GEMM` is set False unless
the user sets it, srt/arg_groups/model_hook.py, so wo_a is BF16, dequantized at load).

How SM120 selects (`_apply_wo_a_bf16_matmul`, read in SGLang 0.5.23): with fast_path (V4.1), CUDA, and
`get_platform().is_blackwell` (capability majors 10, 11, 12 with CUDA >= 12.8, srt/utils/common.py, so
SM120 is in), for decode with T == 1 (Blackwell or SM90), target verify with 0 < T <= 384, or
prefill (extend without speculation) with 4096 <= T <= 65536, AND the exact shape o[:, 2, 4096] bf16
with stride(2) == 1, stride(1) == 4096, stride(0) >= 8192 and wo_a [2, 1024, 4096] contiguous:
  - decode, T == 1                 -> `kernels/ops/gemm/dsv4_wo_a.py:wo_a_bf16_gemv` (Triton, one CTA per
                                      output row, fp32 dot over the whole D, bf16 store)
  - 2 <= T <= 8 (target verify)    -> `wo_a_bf16_small_batch` (Triton: 8 split-K partials in fp32,
                                      reduced and rounded to bf16 once), or, with fuse_mxfp8_quant,
                                      `wo_a_bf16_small_batch_mxfp8` (the same partials, bf16 rounding, then
                                      MXFP8 for wo_b: e4m3 codes [T, 2048] and UE8M0 scales of each 32
                                      values in FlashInfer's 128x4 swizzle, 8192 bytes; SGLang wraps them in
                                      `Mxfp8SwizzledInput`)
  - any other T of the fast gate   -> `_wo_a_bf16_bmm_token_major` (strided torch.bmm, cuBLAS)
otherwise target verify (any shape, T > 0) still takes the bmm, and the rest (decode with T >= 2,
prefill under 4096 tokens) falls to `torch.einsum` (kernels/wo_a.py measures that one). So the small-
batch kernels serve speculative verify only: a V4.1 decode batch of 2..8 goes to einsum. The fused
rope + wo_a kernel is not taken on SM120 (`_fused_wo_a_arch_supported`: capability major == 10).
fuse_mxfp8_quant is `use_flashinfer_mxfp8_wo_b` (wo_b on FlashInfer's CuTe-DSL MXFP8 GEMM) and not
sp_active; whether FlashInfer's CuTe-DSL MXFP8 backend takes SM120 is FlashInfer's answer
(`is_backend_supported("cute-dsl", 120)`), not in SGLang's sources: both variants are measured.

Shapes: the fast gate fixes G = 2, D = 4096, R = 1024 (the "validated TP4 shape" of the source comment):
V4.1-Flash's o_groups 8, 8 heads x 512 a group and o_lora_rank 1024 at TP4, as V4's config states them
(srt/configs/deepseek_v4.py); V4.1's own values live in its checkpoint config, not in SGLang's sources
(assumed equal: the gate's shape is the only V4.1 statement). o's row stride: 16 x 512 = 8192 where the
attention kernel runs the rank's 16 heads (`kernel_num_heads = n_local_heads`: V4.1 on a uniform FP8
pool, or FlashInfer's exact-head decode), 64 x 512 = 32768 where it runs FlashMLA's padded 64 heads
(`_kernel_num_heads`, SM120 decode <= 64 tokens without an exact-head specialization; V4.1 zeroes the
padded queries, so those heads hold finite garbage, here NaN: no path may read them).

Inputs, in the production layout (kernels/wo_a.py's inputs, reused):
  o_attn  [T, Hk, 512] bf16, the rank's 16 heads first, Hk = 16 or 64 (padded)
  wo_a    [2, R, 4096] bf16: the load hook's output, kernels/wo_a.py's block-FP8 checkpoint weight
          dequantized (exact in bf16), R = 1024; tiny gemv cases keep the first R rows of each group (the
          gemv kernel is generic in R; only the dispatcher's gate needs 1024)
Outputs: `y` [T, 2, R] bf16. The MXFP8 paths return `y` as SGLang's consumer reads it (each e4m3 code
times 2^(scale byte - 127) of its 32-value block, unswizzled from the 128x4 layout: exact in bf16) and the
raw `y_fp8` [T, 2048] and `y_scale` [8192] uint8 beside it; the dispatcher paths return `branch`, the
function `_apply_wo_a_bf16_matmul` called (BRANCHES).
Input magnitudes: kernels/wo_a.py's (o ~ N(0, 1) x 2^U(-1, 1) a token, a zero token where T >= 3; W as a
block-FP8 checkpoint, one all-zero block).

On the CPU (Triton's interpreter) the Triton paths run SGLang's kernels with three things the interpreter
does not do as a GPU does, done as a GPU does them (`op.as_on_a_gpu`): its `tl.dot` multiplies bf16
operands as their uint16 bits (triton-lang/triton#11584), its fp32 -> bf16 conversion truncates and its
fp32 -> e4m3 conversion drops the carry of a rounded-up mantissa (a 2x error; cf. triton#8322). The
kernels' `x.is_cuda` asserts are answered by a CPU tensor that says it is on the device (`_on_device`),
and the dispatcher is asked with SGLang's own `override_platform(is_blackwell=True, ...)` and
`_is_cuda` as on an RTX PRO 6000. The small-batch kernels assert the exact TP4 shape (no smaller one
exists), so a launch costs ~10 s of interpreter: the tiny cases keep two that run them (T = 8, and T = 2
with MXFP8), each through two paths (the kernel, the dispatcher), ~80 s of one CPU core in all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch

from harness.parity import op
from harness.parity.op import ORACLE, Case, Metric, Path, Unavailable, case_maker, guarded_allocations, import_module

_wo_a = op.sibling(__file__, "wo_a")

OP = "wo_a_v41"
# bf16 operands, fp32 accumulation, one bf16 rounding: bf16's ceilings. The MXFP8 outputs carry e4m3's 3
# mantissa bits on top (a relative step of 2^-3..2^-4 in each 32-value block): the fp8 ceilings of the
# harness (harness/results/ceilings.py) on those paths only.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
G, D, R = 2, _wo_a.D, _wo_a.R  # the fast gate's exact shape
HEADS = _wo_a.HEADS_PER_GROUP * G  # 16 heads a rank at TP4
MX_BLOCK = 32  # MXFP8: one UE8M0 scale per 32 values
MX_COLS = G * R // MX_BLOCK  # 64 scales a row
SCALE_BYTES = 8192  # one 128-row tile of the 128x4 layout: 128 x 64
MXFP8_PATHS = ("sglang.small_batch_mxfp8", "sglang.dispatch_mxfp8")
CEILINGS = {
    **{f"{p}:calc_diff": 1e-3 for p in MXFP8_PATHS},
    **{f"{p}:worst_row_calc_diff": 5e-3 for p in MXFP8_PATHS},
    "wrong_branch": 0.0,  # the dispatcher called another function than its gate selects on SM120
    "mxfp8_scale_mismatch": 0.0,  # a block scale other than UE8M0's round-up of amax / 448
    "mxfp8_padding_scales": 0.0,  # a scale byte of the tile's padding rows (T..127) not zeroed
}
BRANCHES = ("einsum", "gemv", "small_batch", "small_batch_mxfp8", "bmm")


_case = case_maker(G=G, R=R, mode="verify", padded=False, fuse_mxfp8=False)


def cases() -> list[Case]:
    """`fuse_mxfp8`: wo_b is FlashInfer's MXFP8 GEMM (fuse_mxfp8_quant); it changes only the 2..8 rows."""
    out = [
        # T = 1 decode: the gemv alone on the first 16 rows of each group (32 CTAs; the whole shape is 2048,
        # ~20 s of interpreter); the dispatcher's gate refuses R = 16 (einsum), and says so
        _case("tiny_t1_r16_decode_padded", {"tiny"}, T=1, R=16, mode="decode", padded=True),
        # the last row of the small-batch branch, on FlashMLA's padded heads (row stride 32768)
        _case("tiny_t8_verify_padded", {"tiny"}, T=8, padded=True),
        # the first row of it with wo_b on MXFP8; the row stride at the gate's limit (8192)
        _case("tiny_t2_verify_mxfp8", {"tiny"}, T=2, fuse_mxfp8=True),
        # one row past the small batch: the fast gate's bmm
        _case("tiny_t9_verify", {"tiny"}, T=9),
        # a decode batch of 4: not a fast shape (einsum)
        _case("tiny_t4_decode", {"tiny"}, T=4, mode="decode"),
    ]
    for padded in (True, False):
        sfx = "_padded" if padded else ""
        out.append(_case(f"b1_tp4{sfx}", {"flash", "tp4"}, T=1, mode="decode", padded=padded))
        for t in (2, 4, 8, 9, 64, 384, 385):  # MTP verify rows: small batch to 8, bmm past it
            out.append(_case(f"v{t}_tp4{sfx}", {"flash", "tp4"}, T=t, padded=padded))
            if t in (2, 8, 9):
                out.append(_case(f"v{t}_tp4{sfx}_mxfp8", {"flash", "tp4"}, T=t, padded=padded, fuse_mxfp8=True))
    out.append(_case("b8_tp4_padded", {"flash", "tp4"}, T=8, mode="decode", padded=True))  # einsum
    for t in (2048, 4096, 8192):  # prefill: einsum under 4096 tokens, bmm from it
        out.append(_case(f"t{t}_tp4", {"flash", "tp4"}, T=t, mode="prefill"))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """kernels/wo_a.py's inputs for G = 2, its checkpoint weight dequantized as the load hook does (e4m3
    times a power of two: exact in bf16), the first R rows of each group kept."""
    t = _wo_a.make_inputs(case, gen)
    w = _wo_a.dequant_f64(t["wo_a_fp8"], t["wo_a_scale"]).view(G, R, D)[:, : case.params["R"]]
    return {"o_attn": t["o_attn"], "wo_a": w.to(torch.bfloat16).contiguous()}


def cost(case: Case) -> tuple[float, float]:
    """o read, the bf16 weight read once, y written; the GEMM."""
    T, r = case.params["T"], case.params["R"]
    return float(T * G * D * 2 + G * r * D * 2 + T * G * r * 2), float(2.0 * T * G * r * D)


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring, on the rank's heads only."""
    return {"y": torch.einsum("tgd,grd->tgr", _wo_a._o(t, case).double(), t["wo_a"].double()).contiguous()}


def expected_branch(case: Case) -> str:
    """What `_apply_wo_a_bf16_matmul(fast_path=True)` calls on an SM120 GPU (is_blackwell, CUDA, not HIP),
    from its source: the fast gate, then the verify bmm, else einsum. Every layout here meets the gate's
    strides (stride(0) 8192 or 32768)."""
    p = case.params
    T, mode = p["T"], p["mode"]
    shape = p["G"] == G and p["R"] == R
    fast = shape and (
        (mode == "decode" and T == 1)
        or (mode == "verify" and 0 < T <= 384)
        or (mode == "prefill" and 4096 <= T <= 65536)
    )
    if fast:
        if mode == "decode" and T == 1:
            return "gemv"
        if 2 <= T <= 8:
            return "small_batch_mxfp8" if p["fuse_mxfp8"] else "small_batch"
        return "bmm"
    return "bmm" if mode == "verify" and T > 0 else "einsum"


def swizzled_offsets(rows: int) -> torch.Tensor:
    """[rows, 64] byte offsets of each row's block scales in FlashInfer's 128x4 layout (the formula of
    SGLang's kernels/ops/quantization/mxfp8_epilogue.py docstring): 128-row x 4-column tiles of 512 bytes,
    row r at ((r % 32) * 4 + (r // 32) % 4) * 4 within its tile."""
    r = torch.arange(rows)[:, None]
    c = torch.arange(MX_COLS)[None, :]
    tiles_per_row = (MX_COLS + 3) // 4
    return (r // 128) * tiles_per_row * 512 + (c // 4) * 512 + ((r % 32) * 4 + (r // 32) % 4) * 4 + c % 4


def dequant_mxfp8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """What wo_b's MXFP8 GEMM multiplies: codes [T, 2048] e4m3 times 2^(byte - 127) of their 32-value block,
    the byte read from the 128x4 layout; as [T, 2, 1024] bf16 (exact: 3 mantissa bits times a power of two)."""
    T = codes.shape[0]
    sf = scales.view(torch.uint8).cpu().long()[swizzled_offsets(T).reshape(-1)].view(T, MX_COLS)
    scale = op.dsv4.pow2(sf - 127).repeat_interleave(MX_BLOCK, 1)
    return (codes.cpu().double() * scale).view(T, G, R).to(torch.bfloat16)


def ue8m0_candidates(y: torch.Tensor, rel: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """For y [T, 2048] float64 (the oracle), the UE8M0 byte of each 32-value block by its definition: the
    smallest power of two 2^(b - 127) with amax / 2^(b - 127) <= 448, amax taken in bf16 (the kernel rounds
    y to bf16 first), 0 for an all-zero block. Two candidates a block: amax moved by `rel` either way
    before the bf16 rounding (the kernel's fp32 sums are not the oracle's), and an exact power of two may
    go either way (the kernel multiplies by fp32's 1/448)."""
    amax = y.abs().view(y.shape[0], MX_COLS, MX_BLOCK).amax(-1)

    def byte(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.log2(a.to(torch.bfloat16).double() / 448.0)
        up = torch.ceil(e)
        near = (e - torch.round(e)).abs() < 1e-6
        lo, hi = torch.where(near, torch.round(e), up), torch.where(near, torch.round(e) + 1, up)
        zero = a == 0
        return [torch.where(zero, 0.0, (x + 127).clamp(0, 254)).long() for x in (lo, hi)]

    lo, _ = byte(amax * (1 - rel))
    _, hi = byte(amax * (1 + rel))
    return lo, hi


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`wrong_branch` (dispatcher paths): 1 where `_apply_wo_a_bf16_matmul` called another function than
    `expected_branch`. MXFP8 paths: `mxfp8_scale_mismatch`, block scales outside `ue8m0_candidates`;
    `mxfp8_padding_scales`, non-zero bytes of the 128-row tile's rows T..127 (SGLang's kernel zeroes them
    for the GEMM, which reads whole tiles)."""
    out = []
    if "branch" in outputs:
        took = BRANCHES[int(outputs["branch"].reshape(-1)[0])]
        want = expected_branch(case)
        out.append(Metric("wrong_branch", float(took != want), unit="count", detail={"took": took, "expected": want}))
    if "y_scale" in outputs:
        T = case.params["T"]
        s = outputs["y_scale"].view(torch.uint8).cpu().long().reshape(-1)
        got = s[swizzled_offsets(T).reshape(-1)].view(T, MX_COLS)
        lo, hi = ue8m0_candidates(oracle_out["y"].cpu().reshape(T, G * R).double())
        bad = (got < lo) | (got > hi)
        out.append(Metric("mxfp8_scale_mismatch", float(bad.sum()), unit="count", detail={"blocks": T * MX_COLS}))
        used = torch.zeros(SCALE_BYTES, dtype=torch.bool)
        used[swizzled_offsets(T).reshape(-1)] = True
        out.append(Metric("mxfp8_padding_scales", float((s[~used] != 0).sum()), unit="count"))
    return out


# ---------------------------------------------------------------------------------------------- on the CPU


def _on_device(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(op.as_cuda(x) for x in ts)


_plain = op.plain


@contextlib.contextmanager
def _sm120_platform(m) -> Iterator[None]:
    """The dispatcher's platform answers as on an RTX PRO 6000 (capability 12.0) under the interpreter:
    SGLang's own scoped override, and its module-level `_is_cuda`. On a GPU, the GPU's own answers (the
    fast path is Blackwell's: another GPU is not what this op measures)."""
    if op.interpreted():
        rc = import_module("sglang.srt.runtime_context")
        with rc.override_platform(is_cuda=True, is_blackwell=True, is_sm120=True, is_sm90=False, is_sm100=False):
            with mock.patch.object(m, "_is_cuda", True):
                yield
        return
    if torch.cuda.get_device_capability()[0] not in (10, 11, 12):
        raise Unavailable("the V4.1 fast path is Blackwell's (is_blackwell: capability majors 10-12)")
    yield


# ---------------------------------------------------------------------------------------------- paths


def _kernels():
    return import_module("sglang.kernels.ops.gemm.dsv4_wo_a")


def _model():
    return import_module("sglang.srt.models.deepseek_v4")


def _args(t: dict, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """o as MQALayer.forward hands it over (the rank's heads of the attention output, viewed [T, 2, 4096]),
    and the weight; both answering `is_cuda` on the CPU."""
    return _on_device(_wo_a._o(t, case), t["wo_a"])


def _need(case: Case, branch: str, what: str) -> None:
    """A kernel path runs where the dispatcher calls that kernel on SM120 (its gate read at the exact
    shape: the gemv's tiny case keeps fewer rows, which the gemv takes and the gate does not)."""
    p = case.params
    if expected_branch(Case(case.name, {**p, "R": R})) != branch:
        raise Unavailable(f"{what}: SM120's dispatcher does not call it for {p['mode']} with T={p['T']}")
    if p["R"] != R and branch != "gemv":
        raise Unavailable(f"{what} asserts wo_a [2, 1024, 4096] (R={p['R']})")


def sglang_gemv(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`wo_a_bf16_gemv(o, wo_a)`, T = 1 (decode); `module` an edited copy (tests/ops/planted_wo_a_v41.py)."""
    _need(case, "gemv", "wo_a_bf16_gemv")
    mod = module or _kernels()
    with guarded_allocations(mod) as allocs, op.as_on_a_gpu():
        y = mod.wo_a_bf16_gemv(*_args(t, case))
    return {"y": _plain(y), **allocs.result()}


def sglang_small_batch(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`wo_a_bf16_small_batch(o, wo_a)`, 2..8 rows (target verify)."""
    _need(case, "small_batch", "wo_a_bf16_small_batch")
    mod = module or _kernels()
    with guarded_allocations(mod) as allocs, op.as_on_a_gpu():
        y = mod.wo_a_bf16_small_batch(*_args(t, case))
    return {"y": _plain(y), **allocs.result()}


def _mxfp8_outputs(codes: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    codes, scales = _plain(codes), _plain(scales)
    return {"y": dequant_mxfp8(codes, scales).to(codes.device), "y_fp8": codes, "y_scale": scales}


def sglang_small_batch_mxfp8(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`wo_a_bf16_small_batch_mxfp8(o, wo_a)` (fuse_mxfp8_quant), 2..8 rows; judged as wo_b reads it."""
    _need(case, "small_batch_mxfp8", "wo_a_bf16_small_batch_mxfp8")
    mod = module or _kernels()
    with guarded_allocations(mod) as allocs, op.as_on_a_gpu():
        codes, scales = mod.wo_a_bf16_small_batch_mxfp8(*_args(t, case))
    return {**_mxfp8_outputs(codes, scales), **allocs.result()}


def sglang_bmm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`_wo_a_bf16_bmm_token_major(o, wo_a)` (torch.bmm into the token-major output), every T."""
    m = _model()
    with guarded_allocations(m) as allocs:
        y = m._wo_a_bf16_bmm_token_major(*_args(t, case))
    return {"y": _plain(y), **allocs.result()}


def _dispatch(t: dict, case: Case, fuse_mxfp8: bool) -> dict[str, torch.Tensor]:
    """`_apply_wo_a_bf16_matmul(o, wo_a, ..., fast_path=True)` as MQALayer.forward calls it for V4.1 in the
    case's forward mode, each function it may call recorded (then run) to return `branch`. Each of the
    two paths takes the cases of its wo_b (`fuse_mxfp8`): the small-batch kernels cost ~10 s a launch
    under the interpreter, and neither path would measure anything new on the other's cases."""
    if case.params["fuse_mxfp8"] != fuse_mxfp8:
        raise Unavailable(f"the case's wo_b is {'FlashInfer MXFP8' if case.params['fuse_mxfp8'] else 'not MXFP8'}")
    m, k = _model(), _kernels()
    mode = case.params["mode"]
    took: list[str] = []

    def spy(name: str, fn):
        def call(*args, **kwargs):
            took.append(name)
            return fn(*args, **kwargs)

        return call

    spies = {
        "wo_a_bf16_gemv": "gemv",
        "wo_a_bf16_small_batch": "small_batch",
        "wo_a_bf16_small_batch_mxfp8": "small_batch_mxfp8",
        "_wo_a_bf16_bmm_token_major": "bmm",
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sm120_platform(m))
        for attr, name in spies.items():
            stack.enter_context(mock.patch.object(m, attr, spy(name, getattr(m, attr))))
        allocs = stack.enter_context(guarded_allocations(k, m))
        stack.enter_context(op.as_on_a_gpu())
        y = m._apply_wo_a_bf16_matmul(
            *_args(t, case),
            is_decode=mode == "decode",
            is_target_verify=mode == "verify",
            is_prefill=mode == "prefill",
            fast_path=True,
            fuse_mxfp8_quant=fuse_mxfp8,
        )
    branch = torch.tensor([BRANCHES.index(took[0]) if took else 0], dtype=torch.int64)
    if isinstance(y, m.Mxfp8SwizzledInput):
        return {**_mxfp8_outputs(y.data, y.scales), "branch": branch, **allocs.result()}
    # einsum returns a permuted view; wo_b reads either layout (o.flatten(1))
    return {"y": _plain(y).contiguous(), "branch": branch, **allocs.result()}


def sglang_dispatch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return _dispatch(t, case, fuse_mxfp8=False)


def sglang_dispatch_mxfp8(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return _dispatch(t, case, fuse_mxfp8=True)


def _timed(fn_name: str, branch: str):
    def timed(t: dict, case: Case):
        _need(case, branch, fn_name)
        fn, args = getattr(_kernels(), fn_name), _args(t, case)
        return lambda: fn(*args)

    return timed


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 einsum from the definition"),
    Path(
        "sglang.gemv",
        sglang_gemv,
        timed=_timed("wo_a_bf16_gemv", "gemv"),
        note="dsv4_wo_a.py wo_a_bf16_gemv (V4.1 decode, T = 1)",
    ),
    Path(
        "sglang.small_batch",
        sglang_small_batch,
        timed=_timed("wo_a_bf16_small_batch", "small_batch"),
        note="dsv4_wo_a.py wo_a_bf16_small_batch (V4.1 target verify, 2..8 rows)",
    ),
    Path(
        "sglang.small_batch_mxfp8",
        sglang_small_batch_mxfp8,
        timed=_timed("wo_a_bf16_small_batch_mxfp8", "small_batch_mxfp8"),
        note="dsv4_wo_a.py wo_a_bf16_small_batch_mxfp8 (fuse_mxfp8_quant), dequantized as wo_b reads it",
    ),
    Path("sglang.bmm_token_major", sglang_bmm, note="deepseek_v4.py _wo_a_bf16_bmm_token_major (torch.bmm)"),
    Path(
        "sglang.dispatch",
        sglang_dispatch,
        note="_apply_wo_a_bf16_matmul(fast_path=True) as on SM120; `branch` says what it called (other cases)",
    ),
    Path(
        "sglang.dispatch_mxfp8",
        sglang_dispatch_mxfp8,
        note="_apply_wo_a_bf16_matmul(fast_path=True, fuse_mxfp8_quant=True) as on SM120 (fuse_mxfp8 cases)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.gemm.dsv4_wo_a:wo_a_bf16_gemv": "",
    "sglang.kernels.ops.gemm.dsv4_wo_a:wo_a_bf16_small_batch": "",
    "sglang.kernels.ops.gemm.dsv4_wo_a:wo_a_bf16_small_batch_mxfp8": "",
    "sglang.srt.models.deepseek_v4:_wo_a_bf16_bmm_token_major": (
        "the DSpark draft's verify with G = 8 (no attention TP)"
    ),
    "sglang.srt.models.deepseek_v4:_apply_wo_a_bf16_matmul": (
        "fast_path=False (kernels/wo_a.py), the HIP / gfx950 and aiter branches, fp8_grid / emit_fp8"
    ),
}

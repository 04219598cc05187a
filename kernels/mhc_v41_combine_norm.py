"""DeepSeek-V4.1 mHC, step 2: collapse the 4 residual streams with the previous triplet's pre and RMS-normalize
the sum, the sublayer's input, in one Triton kernel (optionally quantized to MXFP8 in its epilogue):

    s[h] = sum_k pre[k] * x[k * 5120 + h]                   (the kernels round s to bf16 here, as the unfused
    y[h] = s[h] * rsqrt(mean(s^2) + eps) * weight[h]         combine stores it; the oracle does not)
    y_q, y_sf = MXFP8(y): per 32 values of y (bf16), the scale 2^e with e the least integer such that
                amax / 2^e <= 448 (UE8M0 byte e + 127; 0 for an all-zero group), y_q = e4m3(y / 2^e) rounded
                to nearest; y_sf in FlashInfer's 128x4 swizzle (rows padded to 128, the padding zero)

The combine is V4's (kernels/mhc_combine.py); the norm is RMSNorm's (kernels/rmsnorm.py); the fused kernel, the
intermediate bf16 rounding and the MXFP8 epilogue are V4.1's.

Call site: `srt/models/deepseek_v4_mhc.py:_combine(hc, state, quantized)` (from `combine` when the previous post
left no normed input: every read of a V4.1 sublayer outside the 4096..65536-row fused prefill post). On SM120
(`get_platform().is_blackwell`) a CUDA bf16 residual with hidden 5120, hc_mult 4, a bf16 RMSNorm weight and
`apply_pre` contiguous takes:
  - `kernels/ops/layernorm/hc_combine_norm.py:hc_combine_norm_mxfp8(x_flat, pre, norm.weight, eps)` when the
    sublayer takes MXFP8 input (`quantized` is a list: the attention read when its wq_a/wkv consume FlashInfer's
    128x4 MXFP8, `accepts_mxfp8_swizzled_input`) and rows <= 128 (its scales address one 128-row tile);
  - `hc_combine_norm(x_flat, pre, norm.weight, eps)` otherwise: `_hc_combine_norm` with the 5120 columns split
    over 4 programs per row up to 8 rows, 2 up to 48, 1 above; `_hc_combine_norm_prefill` (one program per row)
    from 4096 rows.
All three kernels are TRITON and run on the CPU under the interpreter (`sglang.triton`, `sglang.triton_mxfp8`).
`_combine` itself takes the fused branch only for a CUDA tensor (`x.is_cuda`): `sglang.model` and
`sglang.model_mxfp8` run it under SM120's platform facts, on the CPU with a residual that answers is_cuda True
(kernels/mhc_v41_mix.py's sm120_platform and as_device).

Under Triton's interpreter (Triton 3.8, `triton/runtime/interpreter.py:_convert_float`) the fp32 -> e4m3 cast
is not round-to-nearest-even: a tie rounds away from zero, and a round-up that carries out of the mantissa is
OR-ed into the exponent, which halves the value where the exponent is odd (-127 becomes -64). So on the CPU an
MXFP8 path says so (the output `interpreted_fp8_cast`) and its bytes are held exactly to that conversion
instead; on a GPU they are held to round-to-nearest-even, as `cvt.rn.satfinite.e4m3x2.f32` gives.

Inputs, in the production layout (hidden 5120 is hard-coded in hc_combine_norm and in `_combine`'s condition):
  x_flat  [T, 20480] bf16: the residual streams R, stream-major (state.residual.flatten(1))
  pre     [T, 4] fp32: the previous hyper-connection's pre (sigmoid(.) + 1e-6)
  weight  [5120] bf16: the sublayer's RMSNorm weight (input_layernorm / post_attention_layernorm)
  eps     rms_norm_eps = 1e-6 (RMSNorm.variance_epsilon; the config default, assumed for V4.1-Flash)
Outputs: `y` [T, 5120] bf16; the MXFP8 paths also `y_q` [T, 5120] float8_e4m3fn and `y_sf` [160 * 128] uint8.

Input magnitudes: the residual as kernels/mhc_v41_mix.py draws it (a zero row and a row of RMS 1e-3 as edges);
pre = sigmoid(N(0, 1)) + 1e-6 as kernels/mhc_combine.py draws it; weight ~ N(1, 0.2^2).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    Unavailable,
    calc_diff,
    case_maker,
    guarded_allocations,
    import_module,
    interpreted,
    sibling,
)

_mix = sibling(__file__, "mhc_v41_mix")

OP = "mhc_v41_combine_norm"
# fp32 sums and norm with two bf16 roundings (the sum, then y): bf16's ceilings apply to y. The MXFP8 outputs
# are judged exactly against the definition applied to the path's own y (a wrong byte is a bug, not rounding),
# and their dequantized values against the oracle at fp8's calc_diff ceiling.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
HC, HIDDEN, GROUP = 4, 5120, 32
MXFP8_MAX_ROWS = 128
E4M3_MAX = 448.0
CEILINGS = {"y_q.mismatch": 0.0, "y_sf.mismatch": 0.0, "y_q.dequant_calc_diff": 1e-3}
UNJUDGED = {
    "y_q.dequant_calc_diff_interpreted": (
        "y_q dequantized against the oracle where Triton's interpreter cast it (its e4m3 rounding is not "
        "round-to-nearest-even, ~2e-3): y_q.mismatch holds those bytes exactly to that cast instead"
    ),
}


_case = case_maker(eps=1e-6, quantize=False, edge_rows=True)


def cases() -> list[Case]:
    out = [
        # the decode kernel's column split: 4 programs a row up to 8 rows, 2 up to 48, 1 above
        _case("tiny_t8_edge", {"tiny"}, T=8),
        _case("tiny_t9", {"tiny"}, T=9, edge_rows=False),
        _case("tiny_t49", {"tiny"}, T=49, edge_rows=False),
        # the attention's read when wq_a/wkv take MXFP8 (both kernels run it; the model takes the MXFP8 one)
        _case("tiny_t3_mxfp8_edge", {"tiny"}, T=3, quantize=True),
    ]
    for t in (1, 8, 9, 48, 49, 128):
        out.append(_case(f"b{t}", {"flash"}, T=t))
        out.append(_case(f"b{t}_mxfp8", {"flash"}, T=t, quantize=True))
    # 129 quantized rows: past the MXFP8 tile, the model takes the plain kernel; 4096 rows: the prefill kernel
    out.append(_case("b129_mxfp8", {"flash"}, T=129, quantize=True))
    for t in (4095, 4096, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T = p["T"]
    x = _mix.residual_streams(T, HIDDEN, gen, p["edge_rows"])
    pre = torch.sigmoid(torch.randn(T, HC, generator=gen)) + 1e-6
    weight = (1.0 + 0.2 * torch.randn(HIDDEN, generator=gen)).to(torch.bfloat16)
    return {"x_flat": x.flatten(1).contiguous(), "pre": pre.float().contiguous(), "weight": weight}


def cost(case: Case) -> tuple[float, float]:
    """x read once in bf16, y written (and its fp8 copy and scales); the 4-term combine, the sum of squares
    and the scaling."""
    T = case.params["T"]
    q = T * HIDDEN + T * HIDDEN // GROUP if case.params["quantize"] else 0
    return float(T * HC * HIDDEN * 2 + T * HC * 4 + HIDDEN * 2 + T * HIDDEN * 2 + q), float(T * HIDDEN * 12)


# ---------------------------------------------------------------------------------------------- oracle


def combine_norm_f64(x_flat: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """float64 from the definition: [T, 4 * H] -> [T, H]."""
    s = torch.einsum("tk,tkh->th", pre.double(), x_flat.double().unflatten(1, (HC, -1)))
    return s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps) * weight.double()


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"y": combine_norm_f64(t["x_flat"], t["pre"], t["weight"], case.params["eps"])}


def mxfp8_f64(y: torch.Tensor, interpreter_cast: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MXFP8 of a bf16 y [M, K] from the definition (module docstring): (q [M, K] e4m3, the scale exponents
    [M, K / 32] as UE8M0 bytes, row-major, and the same bytes in FlashInfer's 128x4 swizzle, flat). With
    `interpreter_cast` the scaled values go through Triton's interpreter's own fp32 -> e4m3 cast (see above)."""
    M, K = y.shape
    v = y.double().view(M, K // GROUP, GROUP)
    amax = v.abs().amax(-1)
    mant, ex = torch.frexp(amax / E4M3_MAX)  # amax / 448 = mant * 2^ex, mant in [0.5, 1)
    e = torch.where(mant == 0.5, ex - 1, ex)  # the least e with amax / 2^e <= 448
    zero = amax == 0
    e = torch.where(zero, torch.full_like(e, -127), e)
    q = torch.where(zero[..., None], 0.0, v * torch.pow(2.0, -e.double())[..., None])
    q = q.clamp(-E4M3_MAX, E4M3_MAX).view(M, K)
    q = _interpreter_e4m3(q) if interpreter_cast else q.to(torch.float8_e4m3fn)
    sf = (e + 127).to(torch.uint8)
    # the 128x4 layout: row r = 128 i + 32 a + b and group g = 4 j + c sit at [i, j, b, a, c]
    rows, groups = -(-M // 128) * 128, -(-(K // GROUP) // 4) * 4
    padded = torch.zeros(rows, groups, dtype=torch.uint8)
    padded[:M, : K // GROUP] = sf
    swizzled = padded.view(rows // 128, 4, 32, groups // 4, 4).permute(0, 3, 2, 1, 4).reshape(-1)
    return q, sf, swizzled


def _interpreter_e4m3(v: torch.Tensor) -> torch.Tensor:
    """fp32 -> e4m3 as Triton's interpreter casts it (the kernel's `.to(tl.float8e4nv)`, round mode RTNE)."""
    import triton.language as tl
    from triton._C.libtriton import ir
    from triton.runtime.interpreter import _convert_float

    bits = _convert_float(v.float().numpy(), tl.float32, tl.float8e4nv, ir.ROUNDING_MODE.RTNE)
    return torch.from_numpy(bits.astype("uint8")).view(torch.float8_e4m3fn)


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """For the MXFP8 paths: their bytes against the definition applied to their own bf16 y (exact), and the
    dequantized y_q against the oracle's y."""
    if "y_q" not in outputs:
        return []
    y, q, sf = outputs["y"].cpu(), outputs["y_q"].cpu(), outputs["y_sf"].cpu()
    cast_interpreted = "interpreted_fp8_cast" in outputs
    want_q, want_sf, want_swizzled = mxfp8_f64(y, cast_interpreted)
    q_bad = int((q.view(torch.uint8) != want_q.view(torch.uint8)).sum())
    sf_bad = int((sf != want_swizzled).sum()) if sf.shape == want_swizzled.shape else sf.numel()
    M, K = y.shape
    deq = q.double().view(M, K // GROUP, GROUP) * torch.pow(2.0, want_sf.double() - 127)[..., None]
    return [
        Metric("y_q.mismatch", float(q_bad), unit="count"),
        Metric("y_sf.mismatch", float(sf_bad), unit="count", detail={"bytes": sf.numel()}),
        Metric(
            "y_q.dequant_calc_diff" + ("_interpreted" if cast_interpreted else ""),
            calc_diff(deq.view(M, K), oracle_out["y"].double().cpu()),
        ),
    ]


# ---------------------------------------------------------------------------------------------- paths


def _kernels(module=None):
    return module or import_module("sglang.kernels.ops.layernorm.hc_combine_norm")


def sglang_triton(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`hc_combine_norm` as `_combine` calls it; `module` is an edited copy of hc_combine_norm.py
    (tests/ops/planted_mhc_v41_combine_norm.py)."""
    mod = _kernels(module)
    with guarded_allocations(mod) as allocs:
        y = mod.hc_combine_norm(t["x_flat"], t["pre"], t["weight"], case.params["eps"])
    return {"y": y, **allocs.result()}


def _mxfp8_rows(case: Case) -> None:
    if not case.params["quantize"]:
        raise Unavailable("this case is a read whose sublayer takes bf16 (no MXFP8 epilogue)")
    if case.params["T"] > MXFP8_MAX_ROWS:
        raise Unavailable(f"_combine takes hc_combine_norm_mxfp8 only up to {MXFP8_MAX_ROWS} rows")


def sglang_triton_mxfp8(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    _mxfp8_rows(case)
    mod = _kernels(module)
    with guarded_allocations(mod) as allocs:
        y, q, sf = mod.hc_combine_norm_mxfp8(t["x_flat"], t["pre"], t["weight"], case.params["eps"])
    return {"y": y, "y_q": q, "y_sf": sf, **_cast_flag(), **allocs.result()}


def _cast_flag() -> dict[str, torch.Tensor]:
    """Says the fp8 cast was the interpreter's (module docstring); nothing on a GPU."""
    return {"interpreted_fp8_cast": torch.ones(1)} if interpreted() else {}


def _model_combine(t: dict, case: Case, quantized: list | None) -> torch.Tensor:
    """`_combine` on a stand-in HcSubLayer whose norm carries what the branch reads of an RMSNorm (a bf16
    weight, variance_epsilon, no cast_x_before_out_mul, no variance_size_override), under SM120's facts."""
    mhc = import_module("sglang.srt.models.deepseek_v4_mhc")
    norm = SimpleNamespace(
        weight=t["weight"], variance_epsilon=case.params["eps"], cast_x_before_out_mul=False,
        variance_size_override=None,
    )  # fmt: skip
    hc = SimpleNamespace(cfg=_mix.hc_config(HIDDEN), norm=norm)
    state = mhc.HcState(_mix.as_device(t["x_flat"].view(-1, HC, HIDDEN)), t["pre"])
    with _mix.sm120_platform():
        return _mix.plain(mhc._combine(hc, state, quantized))


def sglang_model(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"y": _model_combine(t, case, None)}


def sglang_model_mxfp8(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The attention's read (`quantized` a list): MXFP8 up to 128 rows, the plain kernel above (the list
    stays empty and the attention quantizes for itself)."""
    if not case.params["quantize"]:
        raise Unavailable("this case is a read whose sublayer takes bf16 (no MXFP8 epilogue)")
    quantized: list = []
    y = _model_combine(t, case, quantized)
    if not quantized:
        return {"y": y}
    q = quantized[0]
    return {"y": y, "y_q": _mix.plain(q.data), "y_sf": _mix.plain(q.scales), **_cast_flag()}


def _timed(t: dict, case: Case):
    fn = _kernels().hc_combine_norm
    return lambda: fn(t["x_flat"], t["pre"], t["weight"], case.params["eps"])


def _timed_mxfp8(t: dict, case: Case):
    _mxfp8_rows(case)
    fn = _kernels().hc_combine_norm_mxfp8
    return lambda: fn(t["x_flat"], t["pre"], t["weight"], case.params["eps"])


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.triton",
        sglang_triton,
        timed=_timed,
        note="hc_combine_norm.py hc_combine_norm (Triton; prefill kernel from 4096 rows)",
    ),
    Path(
        "sglang.triton_mxfp8",
        sglang_triton_mxfp8,
        timed=_timed_mxfp8,
        note="hc_combine_norm.py hc_combine_norm_mxfp8 (Triton)",
    ),
    Path("sglang.model", sglang_model, note="deepseek_v4_mhc._combine, a bf16 read, under SM120's platform facts"),
    Path("sglang.model_mxfp8", sglang_model_mxfp8, note="deepseek_v4_mhc._combine with a quantized list (MXFP8 read)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.hc_combine_norm:hc_combine_norm": "",
    "sglang.kernels.ops.layernorm.hc_combine_norm:hc_combine_norm_mxfp8": "",
    "sglang.srt.models.deepseek_v4_mhc:_combine": (
        "the first read without a pre (norm(x[:, 0]): a real RMSNorm) and the unfused norm(mhc_combine(...)) "
        "fallback (not SM120's branch at hidden 5120)"
    ),
}

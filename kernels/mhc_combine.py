"""DeepSeek-V4 mHC: the combine, y[m, h] = sum_k pre[m, k] * x[m, k * H + h], written in bf16.

Why an op of its own (see kernels/mhc_sinkhorn.py for the split of the chain): it is a separate
Triton kernel with its own precision: fp32 products and sums over 4 streams, then one rounding of
the output to the residual's bf16.

Call sites: `srt/models/deepseek_v4.py DeepseekV4DecoderLayerBase.hc_pre` ends with
`mhc_combine(x_flat, pre.squeeze(1), hc_mult=4, out_dtype=x.dtype)` (`kernels/ops/layernorm/mhc.py`),
the sublayer input before its RMSNorm; the model's last layer (`hc_pre_from_prev_sublayer`) and
DSpark call it the same way on bf16 rows.

Inputs, in the production layout:
  x_flat  [T, 4 * 4096]: the residual streams, stream-major (x.flatten(1)). hc_pre's torch path
          hands over the fp32 copy it made for the GEMM (`x_dtype` "fp32", bf16 values); the DeepGEMM
          branch, DSpark and the last layer pass bf16 (`x_dtype` "bf16")
  pre     [T, 4] fp32: sigmoid(.) + eps from hc_split_sinkhorn, in (0, 1 + 1e-6)
  out_dtype: bf16 (the residual's dtype)

Output: `y` [T, 4096] bf16.

Input magnitudes: the residual as in kernels/mhc_pre_norm.py (O(1), per-token and per-stream
scales); pre = sigmoid(N(0, 1)) + 1e-6, as the split gives it.
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Path, case_maker, function

OP = "mhc_combine"
# fp32 arithmetic over 4 terms, then one bf16 rounding of the output: bf16's ceilings apply. Round to
# nearest gives calc_diff ~1.4e-6; under Triton's interpreter (the CPU runs) the fp32 -> bf16 store
# truncates instead (its cast passes no rounding mode), which measures ~5.4e-6: still inside.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}  # the sublayer input, in the residual's dtype
TOLERANCE = (1e-2, 1e-2)
HC = 4
HIDDEN = 4096


_case = case_maker(H=HIDDEN, x_dtype="fp32")


def cases() -> list[Case]:
    out = [
        _case("tiny_t3_fp32", {"tiny"}, T=3),
        _case("tiny_t2_bf16", {"tiny"}, T=2, x_dtype="bf16"),
        # a hidden size that is not a multiple of the kernel's 1024-wide blocks: the masked tail
        _case("tiny_t2_h1000_tail", {"tiny"}, T=2, H=1000),
    ]
    for t in (1, 8, 32, 128):
        out.append(_case(f"b{t}_fp32", {"flash"}, T=t))
    out.append(_case("b8_bf16", {"flash"}, T=8, x_dtype="bf16"))
    for t in (1024, 8192):
        out.append(_case(f"t{t}_fp32", {"flash"}, T=t))
        out.append(_case(f"t{t}_bf16", {"flash"}, T=t, x_dtype="bf16"))
    return out


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, H = p["T"], p["H"]
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    stream = 0.5 + torch.rand(T, HC, 1, generator=gen)
    x = (torch.randn(T, HC, H, generator=gen) * token * stream).to(torch.bfloat16).flatten(1)
    pre = torch.sigmoid(torch.randn(T, HC, generator=gen)) + 1e-6
    return {"x_flat": (x.float() if p["x_dtype"] == "fp32" else x).contiguous(), "pre": pre.contiguous()}


def cost(case: Case) -> tuple[float, float]:
    p = case.params
    T, H = p["T"], p["H"]
    x_bytes = 4 if p["x_dtype"] == "fp32" else 2
    return float(T * HC * H * x_bytes + T * HC * 4 + T * H * 2), float(2.0 * T * HC * H)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition."""
    x = t["x_flat"].double().unflatten(1, (HC, -1))  # [T, 4, H]
    return {"y": torch.einsum("mk,mkh->mh", t["pre"].double(), x)}


def _combine():
    # hc_combine up to SGLang 0.5.22 (the same kernel and signature), mhc_combine from 0.5.23
    return function("sglang.kernels.ops.layernorm.mhc:mhc_combine", "sglang.kernels.ops.layernorm.mhc:hc_combine")


def sglang_triton(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"y": _combine()(t["x_flat"], t["pre"], HC, torch.bfloat16)}


def _timed(t: dict, case: Case):
    combine = _combine()
    return lambda: combine(t["x_flat"], t["pre"], HC, torch.bfloat16)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path("sglang.triton", sglang_triton, timed=_timed, note="mhc.py mhc_combine (_mhc_combine_kernel)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc:mhc_combine": "",
}

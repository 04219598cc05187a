"""DeepSeek-V4 mHC: the final head, which mixes the 4 residual streams into the one hidden row the final
RMSNorm and the LM head read:

    r      = rsqrt(mean(x_flat^2) + norm_eps)                  x_flat = x.flatten(1), K = 4 * H
    pre[m] = sigmoid((x_flat . hc_fn[m]) * r * hc_scale + hc_base[m]) + hc_eps
    y[h]   = sum_m pre[m] * x[m, h]                             written in x's dtype (bf16)

Call site: `srt/models/deepseek_v4.py DeepseekV4Model.forward` ends with
`self.hc_head(hidden_states, self.hc_head_fn, self.hc_head_scale, self.hc_head_base)` (V4 and
V4.1 unless `hc_pre_from_prev_sublayer`, which calls mhc_combine instead). `DeepseekV4Model.hc_head`
calls the Triton `kernels/ops/layernorm/mhc_head.py:fused_hc_head(x.contiguous(), ...,
norm_eps=self.norm_eps, hc_eps=self.hc_eps)` whenever x is not empty, on every platform but XPU (the
CPU included); the module-level `hc_head_torch` (fp32 torch) runs only for an empty x, so it is SGLang's
reference here, not a path SM120 takes. `norm_eps` is the config's rms_norm_eps (1e-6) and `hc_eps`
its hc_eps (1e-6), both case parameters.

Inputs, in the production layout:
  x        [T, 4, 4096] bf16: the residual streams after the last layer (hc_mult 4, hidden 4096)
  hc_fn    [4, 16384] fp32: hc_head_fn (make_hc_head_params), K in stream-major order
  hc_scale [1] fp32, hc_base [4] fp32

Output: `y` [T, 4096] bf16.

Input magnitudes, as kernels/mhc_pre_norm.py and kernels/mhc_sinkhorn.py choose them (no trained
values in any source we have): the residual O(1) with per-token and per-stream scales, hc_fn ~ N(0,
0.01^2), hc_scale U(0.3, 1), hc_base ~ N(0, 0.5^2). Edge rows where the case asks: a zero row (a
padding token: only norm_eps keeps the rsqrt finite; the answer is 0, never NaN) and a row of RMS 1e-3
(mean(x^2) == norm_eps: dropping the eps moves its gate).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from harness.parity.op import ORACLE, Case, Path, case_maker, import_module, load_by_path

OP = "mhc_head"
# fp32 arithmetic (a K = 16384 dot product and sum of squares, 4 gates), then one bf16 rounding of the
# output: bf16's ceilings apply. Under Triton's interpreter the fp32 -> bf16 store truncates rather
# than rounds (see kernels/mhc_combine.py), which roughly triples calc_diff and stays inside.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
HC = 4
HIDDEN = 4096
HC_FN_STD = 0.01


_case = case_maker(H=HIDDEN, norm_eps=1e-6, hc_eps=1e-6, edge_rows=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t4_edge", {"tiny"}, T=4),
        _case("tiny_t2_plain", {"tiny"}, T=2, edge_rows=False),
        # K = 4000 is not a multiple of the kernel's 512-wide tiles, nor H of its 512-wide output blocks
        _case("tiny_t3_h1000_tail", {"tiny"}, T=3, H=1000),
    ]
    # decode batches and prefill chunks (the head runs once per forward on the last PP rank, on every
    # token of the batch; it does not depend on TP)
    for t in (1, 8, 64, 256):
        out.append(_case(f"b{t}", {"flash"}, T=t))
    for t in (1024, 4096, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, H = p["T"], p["H"]
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    stream = 0.5 + torch.rand(T, HC, 1, generator=gen)
    x = torch.randn(T, HC, H, generator=gen) * token * stream
    if p["edge_rows"] and T >= 3:
        x[-1] = 0.0  # padding token
        x[-2] *= 1e-3 / x[-2].pow(2).mean().sqrt()  # RMS 1e-3: mean(x^2) == norm_eps
    hc_fn = torch.randn(HC, HC * H, generator=gen) * HC_FN_STD
    hc_scale = 0.3 + 0.7 * torch.rand(1, generator=gen)
    hc_base = 0.5 * torch.randn(HC, generator=gen)
    return {
        "x": x.to(torch.bfloat16).contiguous(),
        "hc_fn": hc_fn.float().contiguous(),
        "hc_scale": hc_scale.float(),
        "hc_base": hc_base.float(),
    }


def cost(case: Case) -> tuple[float, float]:
    """x read once in bf16 (the kernel reads it twice; the second pass is a cache hit at best), hc_fn
    once in fp32, y written; the 4 dot products and the sum of squares over K, the 4-term combine."""
    T, H = case.params["T"], case.params["H"]
    K = HC * H
    return float(T * K * 2 + HC * K * 4 + T * H * 2), float(2.0 * T * K * HC + 2.0 * T * K + 2.0 * T * HC * H)


# ---------------------------------------------------------------------------------------------- oracle


def head_f64(x: torch.Tensor, hc_fn, hc_scale, hc_base, norm_eps: float, hc_eps: float) -> torch.Tensor:
    """float64 from the definition in the module docstring: x [T, 4, H] -> y [T, H]."""
    xd = x.double()
    flat = xd.flatten(1)
    r = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    pre = torch.sigmoid(flat @ hc_fn.double().T * r * hc_scale.double() + hc_base.double()) + hc_eps
    return torch.einsum("tm,tmh->th", pre, xd)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    p = case.params
    return {"y": head_f64(t["x"], t["hc_fn"], t["hc_scale"], t["hc_base"], p["norm_eps"], p["hc_eps"])}


# ---------------------------------------------------------------------------------------------- paths


def _args(t: dict, case: Case) -> tuple:
    return t["x"], t["hc_fn"], t["hc_scale"], t["hc_base"]


def sglang_triton(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`fused_hc_head` as hc_head calls it; `module` is a copy of mhc_head.py (tests/ops/planted_mhc_head.py)."""
    mod = module or load_by_path("kernels/ops/layernorm/mhc_head.py")
    p = case.params
    x, fn, scale, base = _args(t, case)
    return {"y": mod.fused_hc_head(x.contiguous(), fn, scale, base, norm_eps=p["norm_eps"], hc_eps=p["hc_eps"])}


def sglang_model(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`DeepseekV4Model.hc_head` itself on a stand-in for the model (the method reads only norm_eps and
    hc_eps; the model's constructor needs a whole server context): the call site's arguments and
    branch, which end in fused_hc_head."""
    model = import_module("sglang.srt.models.deepseek_v4").DeepseekV4Model
    p = case.params
    stand_in = SimpleNamespace(norm_eps=p["norm_eps"], hc_eps=p["hc_eps"])
    return {"y": model.hc_head(stand_in, *_args(t, case))}


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.srt.models.deepseek_v4")
    p = case.params
    return {"y": mod.hc_head_torch(*_args(t, case), norm_eps=p["norm_eps"], hc_eps=p["hc_eps"])}


def _timed(t: dict, case: Case):
    mod = load_by_path("kernels/ops/layernorm/mhc_head.py")
    p = case.params
    x, fn, scale, base = _args(t, case)
    return lambda: mod.fused_hc_head(x, fn, scale, base, norm_eps=p["norm_eps"], hc_eps=p["hc_eps"])


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.triton",
        sglang_triton,
        timed=_timed,
        note="kernels/ops/layernorm/mhc_head.py fused_hc_head, by file path",
    ),
    Path("sglang.model", sglang_model, note="DeepseekV4Model.hc_head (fused_hc_head on every non-XPU device)"),
    Path("sglang.torch", sglang_torch, note="deepseek_v4.py hc_head_torch (SGLang runs it only for an empty x)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc_head:fused_hc_head": "",
    "sglang.srt.models.deepseek_v4:DeepseekV4Model.hc_head": "the empty-batch branch (hc_head_torch on T = 0)",
}

"""DeepSeek-V4 mHC: the split of the 24 mixing logits into (pre, post, comb), comb by Sinkhorn.

Why an op of its own: the chain `hc_pre` runs on SM120 (sglang_inventory.md §1.3) has three kernel
boundaries with different implementations behind each: the prenorm GEMM (kernels/mhc_pre_norm.py,
torch F.linear or DeepGEMM/TileLang TF32), this split (TileLang on SM120, a Triton port, a torch
reference) and the combine (kernels/mhc_combine.py, Triton). They also differ in precision: this
step is pure fp32 elementwise work on 24 numbers per token, the GEMM is TF32-class, the combine
writes bf16. One op per boundary keeps each path's drift attributable and each DTYPE honest.

Call site: `srt/models/deepseek_v4.py DeepseekV4DecoderLayerBase.hc_pre` calls
`get_mhc_ops().hc_split_sinkhorn(mixes, hc_scale, hc_base, hc_mult=4, sinkhorn_iters=20, eps=1e-6)`,
i.e. `kernels/ops/layernorm/mhc.py:hc_split_sinkhorn`: the TileLang `hc_split_sinkhorn_kernel`
everywhere but gfx1250, where the Triton port `_hc_split_sinkhorn_triton` (same signature) runs.

Inputs, in the production layout:
  mixes     [T, 1, 24] fp32: the RMS-normalised prenorm GEMM output (b = tokens, s = 1 as hc_pre
            passes it); per token [0:4] pre logits, [4:8] post logits, [8:24] the 4x4 comb logits,
            row-major (comb[j, k] = mixes[8 + 4j + k])
  hc_scale  [3] fp32: the scales of the pre, post and comb logits
  hc_base   [24] fp32: the biases, laid out like mixes

Outputs (fp32, as the kernels return them):
  pre   [T, 1, 4]     sigmoid(mixes[0:4] * s0 + base[0:4]) + eps
  post  [T, 1, 4]     2 * sigmoid(mixes[4:8] * s1 + base[4:8])
  comb  [T, 1, 4, 4]  a row softmax of the comb logits plus eps, a column normalisation, then
                      (iters - 1) x (row, column) normalisations, each dividing by (sum + eps)

Input magnitudes (trained values are not in any source we have, so these are our choices):
mixes ~ N(0, 1.28^2), what an O(1) residual and hc_fn ~ N(0, 0.01^2) over K = 16384 give after
the RMS normalisation. "typical": hc_scale = (U(0.3, 1), U(0.3, 1), U(0.5, 1.5)), hc_base ~ N(0,
0.5^2) for pre and post, and 2 I + N(0, 0.7^2) for comb (an H_res that leans to the identity, as
mHC initialises it). "sharp": the comb scale U(2.5, 3.5) and comb base 4 I + N(0, 2^2): near-
permutation matrices on which 20 Sinkhorn iterations do not converge, so every iteration, its order
and each eps change the answer. Every case also holds a zero row (a padding token: mixes 0) and a
few outlier rows (one token in 64) with 8x the logits, the first of which is pushed further so that
its largest comb logit is 120: past exp's fp32 range (88.7) unless the row max is subtracted first.
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, calc_diff, case_maker, import_module, require

OP = "mhc_sinkhorn"
# Every path does fp32 elementwise arithmetic on inputs the oracle takes as they are: fp32's
# ceilings apply. Measured on the CPU: comb calc_diff ~1e-15, worst row ~1e-13.
DTYPE = "fp32"
PRIMARY = "comb"
OUTPUTS = {"pre": "float32", "post": "float32", "comb": "float32"}
TOLERANCE = (1e-6, 1e-5)
HC = 4
MIX = (2 + HC) * HC  # 24
ITERS = 20
EPS = 1e-6
MIXES_STD = 1.28  # sqrt(16384) * 0.01: see the module docstring
EXTREME_LOGIT = 120.0
# pre and post get their own metrics (metrics() below). pre's eps (1e-6) is the smallest term of the
# definition: a shift of the whole of pre by it is invisible to a calc_diff (~2e-12) but not to the
# mean signed error, where fp32 rounding (unbiased, <1e-8 measured) leaves it alone.
CEILINGS = {"pre.calc_diff": 1e-9, "post.calc_diff": 1e-9, "pre.bias": 4e-7, "post.bias": 4e-7}


_case = case_maker(regime="typical", outliers=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t16_typical", {"tiny"}, T=16),
        _case("tiny_t16_sharp", {"tiny"}, T=16, regime="sharp"),
        _case("tiny_t5_typical_plain", {"tiny"}, T=5, outliers=False),
    ]
    # decode batches (one token per request) and prefill chunks
    for t in (1, 8, 32, 128):
        out.append(_case(f"b{t}_typical", {"flash"}, T=t))
        out.append(_case(f"b{t}_sharp", {"flash"}, T=t, regime="sharp"))
    for t in (1024, 8192):
        out.append(_case(f"t{t}_typical", {"flash"}, T=t))
        out.append(_case(f"t{t}_sharp", {"flash"}, T=t, regime="sharp"))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def hc_params(regime: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(hc_scale [3], hc_base [24]) fp32 for a regime (see the module docstring)."""
    u = torch.rand(3, generator=gen)
    if regime == "typical":
        scale = torch.stack([0.3 + 0.7 * u[0], 0.3 + 0.7 * u[1], 0.5 + u[2]])
        comb = 2.0 * torch.eye(HC) + 0.7 * torch.randn(HC, HC, generator=gen)
    elif regime == "sharp":
        scale = torch.stack([0.3 + 0.7 * u[0], 0.3 + 0.7 * u[1], 2.5 + u[2]])
        comb = 4.0 * torch.eye(HC) + 2.0 * torch.randn(HC, HC, generator=gen)
    else:
        raise ValueError(f"unknown regime {regime!r}")
    base = torch.cat([0.5 * torch.randn(2 * HC, generator=gen), comb.flatten()])
    return scale.float().contiguous(), base.float().contiguous()


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T = p["T"]
    scale, base = hc_params(p["regime"], gen)
    mixes = torch.randn(T, MIX, generator=gen) * MIXES_STD
    if p["outliers"] and T > 2:
        rows = torch.randperm(T - 1, generator=gen)[: max(1, T // 64)]
        mixes[rows] *= 8.0
        # the first of them: its largest comb logit is made 120, past exp's fp32 range (88.7)
        v = torch.randn(HC * HC, generator=gen)
        j = int(v.argmax())
        mixes[rows[0], 2 * HC :] = v * (EXTREME_LOGIT - base[2 * HC + j]) / (scale[2] * v[j])
    if T > 1:
        mixes[-1] = 0.0  # a padding token
    return {"mixes": mixes.view(T, 1, MIX).contiguous(), "hc_scale": scale, "hc_base": base}


def cost(case: Case) -> tuple[float, float]:
    """Read 24 fp32 per token, write 24; about 2 flops per comb entry per half-iteration plus the
    softmax and the sigmoids (exp and divide counted as one each)."""
    T = case.params["T"]
    nbytes = T * (MIX + 2 * HC + HC * HC) * 4 + (3 + MIX) * 4
    flops = T * (8 * HC + 4 * HC * HC + ITERS * 2 * 2 * HC * HC)
    return float(nbytes), float(flops)


# ---------------------------------------------------------------------------------------------- oracle


def split_sinkhorn_f64(
    mixes: torch.Tensor, hc_scale: torch.Tensor, hc_base: torch.Tensor, iters: int = ITERS, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64, from the definition: mixes [..., 24] -> pre [..., 4], post [..., 4], comb [..., 4, 4]."""
    m, s, b = mixes.double(), hc_scale.double(), hc_base.double()
    pre = torch.sigmoid(m[..., :HC] * s[0] + b[:HC]) + eps
    post = 2.0 * torch.sigmoid(m[..., HC : 2 * HC] * s[1] + b[HC : 2 * HC])
    logits = (m[..., 2 * HC :] * s[2] + b[2 * HC :]).unflatten(-1, (HC, HC))
    comb = torch.softmax(logits, dim=-1) + eps  # over k: each row j
    comb = comb / (comb.sum(-2, keepdim=True) + eps)  # over j: each column k
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return pre, post, comb


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    pre, post, comb = split_sinkhorn_f64(t["mixes"], t["hc_scale"], t["hc_base"])
    return {"pre": pre, "post": post, "comb": comb}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """pre and post beside the primary comb: their calc_diff, and the mean signed error (a constant
    offset, such as an eps added or dropped, moves it by the offset; rounding does not)."""
    found = []
    for name in ("pre", "post"):
        x, ref = outputs[name].double(), oracle_out[name].double()
        bias = float((x - ref).mean())
        found.append(Metric(f"{name}.calc_diff", calc_diff(x, ref)))
        found.append(Metric(f"{name}.bias", abs(bias) if bias == bias else float("inf"), detail={"signed": bias}))
    return found


# ---------------------------------------------------------------------------------------------- paths


def _mhc():
    return import_module("sglang.kernels.ops.layernorm.mhc")


def _named(pre, post, comb) -> dict[str, torch.Tensor]:
    return {"pre": pre, "post": post, "comb": comb}


def sglang_tilelang(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The SM120 default: the dispatcher itself, which picks TileLang on CUDA (the Triton port only
    on gfx1250)."""
    require("tilelang", "SGLang pins tilelang==0.1.12")
    return _named(*_mhc().hc_split_sinkhorn(t["mixes"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS))


def sglang_triton(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The Triton port, called directly (SGLang dispatches it on gfx1250 only); not autotuned."""
    return _named(*_mhc()._hc_split_sinkhorn_triton(t["mixes"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS))


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """SGLang's own fp32 torch reference (sglang/test/kernels/mhc.py), measured like any path."""
    ref = import_module("sglang.test.kernels.mhc")
    return _named(*ref.hc_split_sinkhorn_torch(t["mixes"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS))


def _tilelang_timed(t: dict, case: Case):
    fn = _mhc().hc_split_sinkhorn
    sglang_tilelang(t, case)  # compile outside the timing
    return lambda: fn(t["mixes"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.tilelang",
        sglang_tilelang,
        needs_cuda=True,
        timed=_tilelang_timed,
        note="hc_split_sinkhorn: TileLang hc_split_sinkhorn_kernel, the SM120 default",
    ),
    Path("sglang.triton", sglang_triton, note="_hc_split_sinkhorn_triton (the gfx1250 port), called directly"),
    Path("sglang.torch", sglang_torch, note="test/kernels/mhc.py hc_split_sinkhorn_torch, fp32"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc:hc_split_sinkhorn": "",
}

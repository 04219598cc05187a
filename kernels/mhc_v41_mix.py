"""DeepSeek-V4.1 mHC, step 1: the mix stats, i.e. the prenorm projection of the residual streams and its split
into (pre, post, comb) by Sinkhorn, in one Triton launch pair:

    mixes = (x_flat @ hc_fn^T) * rsqrt(mean(x_flat^2) + rms_eps)          x_flat = x.flatten(1), K = 4 * H
    pre, post, comb = split + Sinkhorn of mixes                              (kernels/mhc_sinkhorn.py's definition)

The math is V4's (kernels/mhc_pre_norm.py then kernels/mhc_sinkhorn.py) and so is the oracle, composed from
those two op files' fp64 functions; what is V4.1's is the kernel and where it runs.

Call site: `srt/models/deepseek_v4_mhc.py:_mix_stats_impl(hc, x)`, reached through `mix_stats` from
`_compute_triplet` (`run_attn_post` / `run_moe_post`, every hyper-connection of a V4.1 layer: config
`hc_pre_from_prev_sublayer` True). On SM120 (`get_platform().is_blackwell`: compute capability majors 10..12,
CUDA >= 12.8) a CUDA bf16 x takes `kernels/ops/layernorm/mhc.py:hc_mix_stats_sinkhorn(x_flat, hc.fn, hc.scale,
hc.base, 4, 20, rms_eps, hc_eps)` at every row count: the DeepGEMM (`hc_mix_stats_sinkhorn_deepgemm`) and the
compensated bf16x3 variants need is_sm100 or is_sm90 with SGLANG_OPT_DEEPGEMM_HC_PRENORM, and the unfused
`hc_mix_stats` + `hc_split_sinkhorn` is the non-bf16 / non-CUDA fallback. Which is which:
  - `hc_mix_stats_sinkhorn` is TRITON: `_hc_mix_stats_partial_kernel` (split-K: the K = 4H columns in
    `_num_slices_for(K)` slices, 80 of 256 columns at H = 5120; tiles of BLOCK_M = 8 rows up to 8 rows, 16 up
    to 2048, 32 above; `tl.dot` at input_precision "tf32x3" on CUDA), then `_hc_mix_reduce_sinkhorn_kernel`
    (one program per row: the slices summed in order, the rsqrt, the sigmoids and 20 Sinkhorn iterations).
    It runs on the CPU under Triton's interpreter (`sglang.triton`), where tl.dot is a plain fp32 product.
  - `_mix_stats_impl` itself takes that branch only for a CUDA tensor (`x.is_cuda`) with a CUDA build of
    torch: `sglang.model` runs it under SM120's platform facts (`sm120_platform()`) on whatever machine runs
    it, and on the CPU hands it x as a CPU tensor that answers `is_cuda` True (`as_device()`), so the branch
    and the kernels it launches run under the interpreter (a CPU-only build of torch skips it).

Inputs, in the production layout (V4.1-Flash: hidden 5120, hc_mult 4, from the inventory and the kernels'
hard-coded 5120 elsewhere in V4.1's mHC; hc_sinkhorn_iters 20, hc_eps = rms_norm_eps = 1e-6 are the config
defaults of `srt/configs/deepseek_v4.py`, assumed for V4.1-Flash's checkpoint):
  x         [T, 4, H] bf16: the residual streams R (the hyper-connection's input)
  hc_fn     [24, 4H] fp32: hc_attn_fn / hc_ffn_fn, K in stream-major order
  hc_scale  [3] fp32, hc_base [24] fp32
Outputs (fp32, as the kernel returns them): pre [T, 4], post [T, 4], comb [T, 4, 4].

Input magnitudes: the residual as kernels/mhc_pre_norm.py draws it (O(1), per-token and per-stream scales);
hc_fn ~ N(0, (1.28 / sqrt(K))^2), which is kernels/mhc_pre_norm.py's N(0, 0.01^2) at K = 16384 and keeps the
normalised mixes near N(0, 1.28^2) at any K (the tiny cases use a small H: the kernel takes any K that is a
multiple of 64); hc_scale and hc_base from kernels/mhc_sinkhorn.py's regimes ("typical", "sharp"). Edge rows:
a zero row (padding: only rms_eps keeps the rsqrt finite) and a row of RMS 1e-3 (mean(x^2) == rms_eps).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Path,
    Unavailable,
    as_cuda,
    case_maker,
    guarded_allocations,
    import_module,
    interpreted,
    sibling,
)

_sinkhorn = sibling(__file__, "mhc_sinkhorn")
_pre_norm = sibling(__file__, "mhc_pre_norm")

OP = "mhc_v41_mix"
# fp32 arithmetic throughout on the CPU (the interpreter's tl.dot is an fp32 product); on a GPU the dot is
# tf32x3 (three TF32 products, error ~2^-22 per product, fp32-class). The outputs are fp32 and go on to a bf16
# post: fp32's ceilings on comb, as kernels/mhc_sinkhorn.py judges it, and its pre/post metrics.
DTYPE = "fp32"
PRIMARY = "comb"
OUTPUTS = {"pre": "float32", "post": "float32", "comb": "float32"}
TOLERANCE = (1e-6, 1e-5)
HC, MIX = 4, 24
HIDDEN = 5120
ITERS = 20
EPS = 1e-6
# the mixes carry a K-long fp32 dot product's rounding (K = 20480: ~1e-7 relative where kernels/mhc_sinkhorn.py
# is fed exact mixes); its pre/post ceilings apply unchanged (measured in tests/test_op_mhc_v41.py)
CEILINGS = dict(_sinkhorn.CEILINGS)
metrics = _sinkhorn.metrics

# SGLang's platform facts on an RTX PRO 6000 (compute capability 12.0, CUDA >= 12.8): what the model paths
# of the V4.1 mHC op files dispatch on, whatever machine runs them
SM120_FACTS = {"is_blackwell": True, "is_sm120": True, "is_sm100": False, "is_sm90": False, "is_sm100_or_sm110": False}


_case = case_maker(H=HIDDEN, regime="typical", edge_rows=True)


def cases() -> list[Case]:
    out = [
        # H = 96: K = 384 is 6 blocks of 64, split in 2 slices of 3 (the loop inside a slice); 8 rows are one
        # BLOCK_M = 8 tile, 9 rows the first of BLOCK_M = 16
        _case("tiny_t8_h96", {"tiny"}, T=8, H=96),
        _case("tiny_t9_h96_sharp", {"tiny"}, T=9, H=96, regime="sharp"),
        # K = 2560: 40 slices of one block (production, H = 5120, has 80 slices of 4 blocks: flash cases)
        _case("tiny_t3_h640", {"tiny"}, T=3, H=640),
    ]
    # decode batches (1..8 rows: BLOCK_M 8; 9: 16) and prefill chunks (2048: 16; 2049: 32)
    for t in (1, 8, 9, 64):
        out.append(_case(f"b{t}", {"flash"}, T=t))
    out.append(_case("b8_sharp", {"flash"}, T=8, regime="sharp"))
    for t in (2048, 2049, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def residual_streams(T: int, H: int, gen: torch.Generator, edge_rows: bool) -> torch.Tensor:
    """[T, 4, H] bf16 residual streams, drawn as kernels/mhc_pre_norm.py draws them at any H."""
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    stream = 0.5 + torch.rand(T, HC, 1, generator=gen)
    x = torch.randn(T, HC, H, generator=gen) * token * stream
    if edge_rows and T >= 3:
        x[-1] = 0.0  # padding token
        x[-2] *= 1e-3 / x[-2].pow(2).mean().sqrt()  # RMS 1e-3: mean(x^2) == eps
    return x.to(torch.bfloat16).contiguous()


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, H = p["T"], p["H"]
    x = residual_streams(T, H, gen, p["edge_rows"])
    scale, base = _sinkhorn.hc_params(p["regime"], gen)
    hc_fn = torch.randn(MIX, HC * H, generator=gen) * (_sinkhorn.MIXES_STD / math.sqrt(HC * H))
    return {"x": x, "hc_fn": hc_fn.float().contiguous(), "hc_scale": scale, "hc_base": base}


def cost(case: Case) -> tuple[float, float]:
    """x read once in bf16, hc_fn once in fp32, the triplet written; the GEMM, the sum of squares and the
    Sinkhorn (kernels/mhc_sinkhorn.py's count)."""
    T, K = case.params["T"], HC * case.params["H"]
    _, sink = _sinkhorn.cost(_sinkhorn._case("x", T=T))
    return float(T * K * 2 + MIX * K * 4 + T * (2 * HC + HC * HC) * 4), float(2.0 * T * K * (MIX + 1) + sink)


# ---------------------------------------------------------------------------------------------- oracle


def mix_f64(x: torch.Tensor, hc_fn, hc_scale, hc_base) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 from the definition: x [T, 4, H] -> pre [T, 4], post [T, 4], comb [T, 4, 4]."""
    mixes = _pre_norm.pre_norm_f64(x, hc_fn, EPS)
    return _sinkhorn.split_sinkhorn_f64(mixes, hc_scale, hc_base, ITERS, EPS)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    pre, post, comb = mix_f64(t["x"], t["hc_fn"], t["hc_scale"], t["hc_base"])
    return {"pre": pre, "post": post, "comb": comb}


# ---------------------------------------------------------------------------------------------- paths


@contextlib.contextmanager
def sm120_platform() -> Iterator[Any]:
    """SGLang's own scoped override of its platform facts (`runtime_context.override_platform`): the
    dispatch an RTX PRO 6000 takes, on the CPU or on another GPU."""
    rc = import_module("sglang.srt.runtime_context")
    with rc.override_platform(**SM120_FACTS) as platform:
        yield platform


def as_device(x: torch.Tensor) -> torch.Tensor:
    """x as SGLang's CUDA branch must see it: itself on a GPU, else op.as_cuda's view (it answers `is_cuda`)."""
    if x.is_cuda or not interpreted():
        return x
    if torch.version.cuda is None:
        raise Unavailable("SGLang's CUDA branch also needs torch.version.cuda: this torch is a CPU-only build")
    return as_cuda(x)


def plain(x: torch.Tensor) -> torch.Tensor:
    """A model path's output as a plain tensor (the engine stores it)."""
    return x.as_subclass(torch.Tensor).contiguous()


def hc_config(H: int) -> Any:
    """The layer's `HcConfig` as DeepseekV4DecoderLayer builds it for V4.1 (pre_from_prev True)."""
    mhc = import_module("sglang.srt.models.deepseek_v4_mhc")
    return mhc.HcConfig(
        mult=HC, sinkhorn_iters=ITERS, eps=EPS, rms_eps=EPS, hidden=H, pre_from_prev=True, cp_prefill=False
    )


def _mhc():
    return import_module("sglang.kernels.ops.layernorm.mhc")


def _named(pre, post, comb) -> dict[str, torch.Tensor]:
    return {"pre": pre, "post": post, "comb": comb}


def sglang_triton(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`hc_mix_stats_sinkhorn` as `_mix_stats_impl` calls it; `module` is an edited copy of mhc.py
    (tests/ops/planted_mhc_v41_mix.py). Its partials and outputs are allocated inside guard bands."""
    mod = module or _mhc()
    with guarded_allocations(mod) as allocs:
        out = mod.hc_mix_stats_sinkhorn(t["x"].flatten(1), t["hc_fn"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS, EPS)
    return {**_named(*out), **allocs.result()}


def sglang_model(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`_mix_stats_impl` on a stand-in `HcSubLayer` (its fields, no tf32/bf16 parts: they exist only on
    SM100/SM90), under SM120's platform facts: the branch selection, then hc_mix_stats_sinkhorn."""
    mhc = import_module("sglang.srt.models.deepseek_v4_mhc")
    hc = SimpleNamespace(
        cfg=hc_config(case.params["H"]), fn=t["hc_fn"], scale=t["hc_scale"], base=t["hc_base"],
        tf32_parts=None, bf16_parts=None,
    )  # fmt: skip
    with sm120_platform():
        return _named(*(plain(o) for o in mhc._mix_stats_impl(hc, as_device(t["x"]))))


def _timed(t: dict, case: Case):
    fn, x = _mhc().hc_mix_stats_sinkhorn, t["x"].flatten(1)
    return lambda: fn(x, t["hc_fn"], t["hc_scale"], t["hc_base"], HC, ITERS, EPS, EPS)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition (mhc_pre_norm + mhc_sinkhorn oracles)"),
    Path("sglang.triton", sglang_triton, timed=_timed, note="mhc.py hc_mix_stats_sinkhorn (Triton split-K + Sinkhorn)"),
    Path("sglang.model", sglang_model, note="deepseek_v4_mhc._mix_stats_impl under SM120's platform facts"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.layernorm.mhc:hc_mix_stats_sinkhorn": "",
    "sglang.srt.models.deepseek_v4_mhc:_mix_stats_impl": (
        "the branches SM120 does not take: DeepGEMM and bf16x3 projections (SM100/SM90 with "
        "SGLANG_OPT_DEEPGEMM_HC_PRENORM), the non-bf16 / non-CUDA fallback (hc_mix_stats + hc_split_sinkhorn)"
    ),
}

"""DeepSeek-V4 mHC: the prenorm GEMM, mixes = (x_flat @ hc_fn^T) * rsqrt(mean(x_flat^2) + eps).

Why an op of its own (see kernels/mhc_sinkhorn.py for the split of the chain): this boundary is the
one GEMM of mHC, and its implementations differ in precision from the steps after it: SGLang's
fallback is an fp32 torch F.linear, the kernels it stands in for (DeepGEMM `tf32_hc_prenorm_gemm`,
and the TileLang gemm_sqrsum that the fused post/pre boundary runs on SM120 above 32 tokens) round
hc_fn to TF32 on tensor cores.

Call site: `srt/models/deepseek_v4.py DeepseekV4DecoderLayerBase.hc_pre(x, hc_fn, hc_scale, hc_base)`.
On SM120 `SGLANG_OPT_DEEPGEMM_HC_PRENORM` is off, so it runs the nested `hc_pre_torch_impl(x, hc_fn)`
(`x.flatten(1).float()`, `F.linear`, `rsqrt(mean(x^2) + rms_norm_eps)`), wrapped in
`@compile_in_capture_mode`: the identity outside CUDA-graph capture, torch.compile of the same
function inside it. With the knob on and T >= 1024 it calls DeepGEMM instead and takes
`rsqrt(sqr_sum / K + eps)` itself.

Inputs, in the production layout:
  x      [T, 4, 4096] bf16: the 4 residual streams of each token (hc_mult 4, hidden 4096)
  hc_fn  [24, 16384] fp32: hc_attn_fn / hc_ffn_fn, K = 4 * 4096 in stream-major order (x.flatten(1))
  rms_norm_eps = 1e-6 (DeepSeek-V4's config), a case parameter

Output: `mixes` [T, 24] fp32 (hc_pre unsqueezes it to [T, 1, 24] for hc_split_sinkhorn).

Input magnitudes: the residual is O(1) per element: N(0, 1) times a per-token scale 2^U(-1, 1) and
a per-stream scale U(0.5, 1.5). hc_fn ~ N(0, 0.01^2), small like trained weights, which puts the
normalised mixes near N(0, 1.28^2). Edge rows, where the case asks: a zero row (a padding token:
only eps keeps the rsqrt finite, so the answer is 0, never NaN) and a row of RMS 1e-3 (mean(x^2) =
1e-6, the size of eps: dropping eps moves that row by a factor sqrt(2)).
"""

from __future__ import annotations

import ast
import functools
import types

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Path,
    Unavailable,
    case_maker,
    deepgemm,
    import_module,
    require,
    require_root,
)

OP = "mhc_pre_norm"
# The kernels this stands for multiply bf16 x (exact in TF32) by hc_fn rounded to TF32. Emulated on
# the CPU against fp64 (K = 16384): TF32 round-to-nearest gives calc_diff 2e-8 (worst row 1e-7),
# truncation 9e-8 (2e-7); fp32 gives 7e-14; hc_fn rounded to bf16 (a real regression: a bf16 GEMM)
# gives 1.4e-6 (worst row 6e-6), barely over the TF32 default of 1e-6. The op's ceilings sit
# between TF32 and bf16 with room on both sides.
DTYPE = "tf32"
CEILINGS = {"calc_diff": 4e-7, "worst_row_calc_diff": 2e-6}
PRIMARY = "mixes"
OUTPUTS = {"mixes": "float32"}
TOLERANCE = (1e-3, 1e-3)
HC = 4
HIDDEN = 4096
K = HC * HIDDEN
MIX = (2 + HC) * HC
HC_FN_STD = 0.01


_case = case_maker(eps=1e-6, edge_rows=True)


def cases() -> list[Case]:
    out = [
        _case("tiny_t4_edge", {"tiny"}, T=4),
        _case("tiny_t3_plain", {"tiny"}, T=3, edge_rows=False),
        _case("tiny_t1", {"tiny"}, T=1, edge_rows=False),
    ]
    # decode batches (T = requests); 33 and 100 are not multiples of the 32-token tiles of the
    # TileLang gemm; 1024 is where SGLang would switch to DeepGEMM
    for t in (1, 8, 33, 128):
        out.append(_case(f"b{t}", {"flash"}, T=t))
    for t in (100, 1024, 4096, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def residual_streams(T: int, gen: torch.Generator, edge_rows: bool) -> torch.Tensor:
    """[T, 4, 4096] bf16 residual streams, O(1) per element (see the module docstring)."""
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    stream = 0.5 + torch.rand(T, HC, 1, generator=gen)
    x = torch.randn(T, HC, HIDDEN, generator=gen) * token * stream
    if edge_rows and T >= 3:
        x[-1] = 0.0  # padding token
        x[-2] *= 1e-3 / x[-2].pow(2).mean().sqrt()  # RMS 1e-3: mean(x^2) == eps
    return x.to(torch.bfloat16).contiguous()


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    x = residual_streams(p["T"], gen, p["edge_rows"])
    hc_fn = (torch.randn(MIX, K, generator=gen) * HC_FN_STD).contiguous()
    return {"x": x, "hc_fn": hc_fn}


def cost(case: Case) -> tuple[float, float]:
    """x read once in bf16, hc_fn once in fp32, mixes written; the GEMM and the sum of squares."""
    T = case.params["T"]
    return float(T * K * 2 + MIX * K * 4 + T * MIX * 4), float(2.0 * T * K * MIX + 2.0 * T * K)


# ---------------------------------------------------------------------------------------------- oracle


def pre_norm_f64(x: torch.Tensor, hc_fn: torch.Tensor, eps: float) -> torch.Tensor:
    """float64 from the definition: x [T, 4, H] -> mixes [T, 24]."""
    xf = x.reshape(x.shape[0], -1).double()
    rms = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (xf @ hc_fn.double().T) * rms


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"mixes": pre_norm_f64(t["x"], t["hc_fn"], case.params["eps"])}


# ---------------------------------------------------------------------------------------------- paths


@functools.lru_cache(maxsize=4)
def hc_pre_torch_impl(rms_norm_eps: float):
    """SGLang's nested `hc_pre_torch_impl`, compiled from deepseek_v4.py's own source lines.

    It is a closure over the layer (for `self.rms_norm_eps`) defined inside `hc_pre`, so it cannot
    be imported. Importing deepseek_v4 would also pull in ~700 SGLang modules (vision processors
    included) to reach 5 lines of torch; instead the function's AST is taken from the file, with its
    decorator (`compile_in_capture_mode`, the identity in eager mode) left off, and compiled against
    torch, F and a stand-in `self` that carries rms_norm_eps. Tracebacks point at the real file."""
    file = require_root() / "sglang" / "srt" / "models" / "deepseek_v4.py"
    if not file.is_file():
        raise Unavailable(f"{file} does not exist in this SGLang version")
    tree = ast.parse(file.read_text(), str(file))
    found = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "DeepseekV4DecoderLayerBase"
        for meth in cls.body
        if isinstance(meth, ast.FunctionDef) and meth.name == "hc_pre"
        for node in ast.walk(meth)
        if isinstance(node, ast.FunctionDef) and node.name == "hc_pre_torch_impl"
    ]
    if len(found) != 1:
        raise Unavailable("DeepseekV4DecoderLayerBase.hc_pre has no nested hc_pre_torch_impl in this SGLang version")
    fn = found[0]
    decorators = [ast.unparse(d) for d in fn.decorator_list]
    if decorators not in ([], ["compile_in_capture_mode"]):
        raise Unavailable(f"hc_pre_torch_impl has decorators {decorators}: re-check what eager mode runs")
    fn.decorator_list = []
    namespace = {
        "torch": torch,
        "F": torch.nn.functional,
        "self": types.SimpleNamespace(rms_norm_eps=rms_norm_eps),
    }
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(file), "exec"), namespace)
    return namespace["hc_pre_torch_impl"]


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The SM120 default for the standalone hc_pre. SGLang leaves float32 matmuls at full precision
    for DeepSeek-V4 (`--enable-tf32-matmul` is not set), so that is pinned here too."""
    impl = hc_pre_torch_impl(case.params["eps"])
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        _, mixes = impl(t["x"], t["hc_fn"])
    finally:
        torch.set_float32_matmul_precision(before)
    return {"mixes": mixes.squeeze(1)}


def _deepgemm_call(t: dict, case: Case):
    """Allocate and return the call that runs DeepGEMM's kernel alone, as hc_pre calls it (num_splits
    None: one [T, 24] output and one [T] sum of squares)."""
    dg = deepgemm.load()
    x = t["x"].flatten(1).bfloat16()
    fn = t["hc_fn"].float().contiguous()
    d = torch.empty(x.shape[0], MIX, dtype=torch.float32, device=x.device)
    s = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)

    def call():
        dg.tf32_hc_prenorm_gemm(x, fn, d, s, num_splits=None)
        return d, s

    return call


def deepgemm_tf32(t: dict, case: Case) -> dict[str, torch.Tensor]:
    d, s = _deepgemm_call(t, case)()
    return {"mixes": d * torch.rsqrt(s / K + case.params["eps"])[:, None]}


def _tilelang_call(t: dict, case: Case):
    require("tilelang", "SGLang pins tilelang==0.1.12")
    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    kernel = mhc._mhc_pre_gemm_sqrsum_dispatch()  # SM120: warp specialisation off
    x = t["x"].flatten(1)
    fn = t["hc_fn"]
    out = torch.empty(x.shape[0], MIX, dtype=torch.float32, device=x.device)
    sqrsum = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)

    def call():
        kernel(x, fn, out, sqrsum, MIX, K)
        return out, sqrsum

    return call


def sglang_tilelang(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The TileLang gemm_sqrsum that `mhc_fused_post_pre` runs on SM120 for more than 32 tokens,
    finished as its big-fuse kernel does: rsqrt(sqrsum / (4 * 4096) + rms_eps)."""
    out, sqrsum = _tilelang_call(t, case)()
    return {"mixes": out * torch.rsqrt(sqrsum / K + case.params["eps"])[:, None]}


def _tilelang_timed(t: dict, case: Case):
    call = _tilelang_call(t, case)
    call()  # JIT-compile outside the timing
    return call


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "deepgemm.tf32",
        deepgemm_tf32,
        golden=True,
        needs_cuda=True,
        timed=_deepgemm_call,
        note="deep_gemm.tf32_hc_prenorm_gemm(x, hc_fn, d, sqr_sum, None), then rsqrt(sqr_sum / K + eps)",
    ),
    Path("sglang.torch", sglang_torch, note="hc_pre_torch_impl (deepseek_v4.py), fp32 F.linear + rsqrt"),
    Path(
        "sglang.tilelang",
        sglang_tilelang,
        needs_cuda=True,
        timed=_tilelang_timed,
        note="mhc.py _mhc_pre_gemm_sqrsum_dispatch(): TileLang TF32 gemm + sum of squares",
    ),
]


# hc_pre's nested hc_pre_torch_impl, compiled from hc_pre's own source
COVERS = {
    "sglang.srt.models.deepseek_v4:DeepseekV4DecoderLayerBase.hc_pre": "",
}

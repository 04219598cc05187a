"""DeepSeek-V4 RMSNorm: `srt/layers/layernorm.py RMSNorm.forward_cuda`, y = x / sqrt(mean(x^2) + eps) * w,
as the model calls it on SM120 (eps = rms_norm_eps = 1e-6, bf16 activations and weights).

Where V4 calls it on SM120 (read from the 0.5.23 sources):
  - `q_norm` (RMSNorm(q_lora_rank = 1024)): `deepseek_v4.py DeepseekV4Attention._normalize_q_lora`
    ends with `self.q_norm(q)` (the MXFP8 branch before it needs V4.1 and is_blackwell; HIP has its own);
    both arms of `_forward_prepare` reach it. q is `qkv_a[..., :1024]`, a strided view of the fused
    wq_a/wkv output [T, 1536] (SGLANG_OPT_FUSE_WQA_WKV, the default): row stride 1536, no residual.
  - `input_layernorm` / `post_attention_layernorm` (RMSNorm(4096)): `deepseek_v4_boundary.py
    HcReadCall.read` calls `layer._input_norm(x)` / `norm(x)` when hc_pre did not fuse the norm, which
    on SM120 is every standalone hc_pre (SGLANG_OPT_USE_TILELANG_MHC_PRE is forced off there, so
    `_mhc_pre_torch` runs and returns norm_fused False): the first layer's attention input, the DSpark
    draft layers (boundary_mhc_fusions=False), and every boundary with SGLANG_OPT_FUSE_MHC_POST_PRE=0.
    Between fused sublayers the norm is inside mhc_fused_post_pre (kernels/mhc_fused_post_pre.py).
  - the final `norm` after hc_head (`DeepseekV4Model._forward_impl`), and the MTP layer's
    enorm / hnorm / shared_head.norm (`deepseek_v4_nextn.py`): RMSNorm(4096), no residual.
  - not this op: `kv_norm` (fused into the K norm-RoPE stores, kernels/k_norm_rope_flashmla.py) and
    the Compressor's fp32-weight norm (fused into kernels/kv_compress.py).
V4 never calls RMSNorm with a residual (mHC replaces the residual add). forward_cuda's residual branch
(`fused_add_rmsnorm`, in place) is still part of the inventory function, so "residual" cases keep it
covered at V4's hidden size; they are marked as off V4's path.

What forward_cuda runs on SM120 (no batch-invariant mode; `_quant_linear` is None, since V4's
projections are block-FP8, not static per-tensor FP8): `sgl_kernel.rmsnorm(x, w, eps)` without a
residual and `sgl_kernel.fused_add_rmsnorm(x, residual, w, eps)` with one. These are sglang-kernel's
(0.4.10, a wheel dependency of sglang 0.5.23) ahead-of-time CUDA builds of FlashInfer's norm kernels:
not JIT, not Triton; the inventory row's "jit_cuda" kind is the JIT `kernels/ops/layernorm/norm.py`,
which forward_cuda uses only with cast_x_before_out_mul (not V4). SGLang's CPU reference is
`RMSNorm.forward_native`: fp32 sum of squares, x * rsqrt(var + eps), then * w and one bf16 rounding.

Inputs, in the production layout:
  x_buf     [T, W] bf16; x = x_buf[:, :H]: W = 1536, H = 1024 for q_norm (the strided view), W = H = 4096 else
  weight    [H] bf16 (the checkpoint's norm weight), ~ N(1, 0.2^2)
  residual  [T, H] bf16, only in "residual" cases
Outputs: `y` [T, H] bf16; with a residual also `residual` [T, H] bf16 = x + residual (forward_cuda writes
both in place).

Edge rows (the last five of every case with T >= 8, and of the tiny ones): a zero row (padding: y = 0),
a row with mean(x^2) == eps (eps halves the scale's square), a row with RMS 1e-5 (eps decides alone),
a row with RMS 3e4, and a row whose one element is 1e4 among O(1) values (a massive activation).
"""

from __future__ import annotations

import ast
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    Unavailable,
    calc_diff,
    case_maker,
    import_module,
    require_root,
    worst_row_calc_diff,
)

OP = "rmsnorm"
# fp32 reduction, one bf16 rounding of y (and of the residual sum): bf16's ceilings apply, to both outputs.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"y": "bfloat16"}  # and `residual` (bf16) where the case has one
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {"residual.calc_diff": 1e-5, "residual.worst_row_calc_diff": 5e-5}
EPS = 1e-6  # DeepSeekV4Config.rms_norm_eps (q_norm uses self.eps, the same value)
Q_LORA, QKV_A, HIDDEN = 1024, 1536, 4096
EDGE_ROWS = 5

_case = case_maker(H=HIDDEN, W=HIDDEN, residual=False)


def cases() -> list[Case]:
    q = dict(H=Q_LORA, W=QKV_A)
    out = [
        _case("tiny_q_norm_t6", {"tiny"}, T=6, **q),
        _case("tiny_hidden_t6", {"tiny"}, T=6),
        _case("tiny_residual_t6", {"tiny", "off_v4_path"}, T=6, residual=True),
    ]
    for t in (1, 8, 64, 256, 1024, 8192):
        out.append(_case(f"{'b' if t <= 256 else 't'}{t}_q_norm", {"flash"}, T=t, **q))
        out.append(_case(f"{'b' if t <= 256 else 't'}{t}_hidden", {"flash"}, T=t))
    for t in (8, 1024):
        out.append(_case(f"{'b' if t <= 256 else 't'}{t}_residual", {"flash", "off_v4_path"}, T=t, residual=True))
    return out


def _edge(rows: torch.Tensor) -> torch.Tensor:
    """Overwrite the last EDGE_ROWS rows of an fp32 [T, H] block (see the module docstring)."""
    H = rows.shape[1]
    rms = rows.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-30)
    rows[-1] = 0.0
    rows[-2] *= (EPS**0.5 / rms[-2])[0]  # mean(x^2) == eps
    rows[-3] *= (1e-5 / rms[-3])[0]  # mean(x^2) = 1e-10, eps dominates
    rows[-4] *= (3e4 / rms[-4])[0]
    rows[-5, H // 3] = 1e4
    return rows


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, H, W = p["T"], p["H"], p["W"]
    token = torch.pow(2.0, torch.rand(T, 1, generator=gen) * 4 - 2)
    buf = torch.randn(T, W, generator=gen) * token
    weight = (1.0 + 0.2 * torch.randn(H, generator=gen)).to(torch.bfloat16)
    out = {"weight": weight}
    if p["residual"]:
        residual = (torch.randn(T, H, generator=gen) * 2.0).to(torch.bfloat16)
        if T >= EDGE_ROWS:
            # the small rows of the sum x + residual must not be a bf16 cancellation: residual 0 there
            residual[-3:] = 0
        out["residual"] = residual.contiguous()
    if T >= EDGE_ROWS:
        buf[-EDGE_ROWS:, :H] = _edge(buf[-EDGE_ROWS:, :H].clone())
    out["x_buf"] = buf.to(torch.bfloat16).contiguous()
    return out


def _x(t: Mapping[str, torch.Tensor], case: Case) -> torch.Tensor:
    return t["x_buf"][:, : case.params["H"]]  # a strided view for q_norm, as production passes it


def cost(case: Case) -> tuple[float, float]:
    """x read and y written in bf16, the weight once; with a residual, it is read and written too.
    About four operations per element (square, sum, scale, weight)."""
    p = case.params
    T, H = p["T"], p["H"]
    nbytes = 2 * T * H * 2 + H * 2 + (2 * T * H * 2 if p["residual"] else 0)
    return float(nbytes), float(4 * T * H + (T * H if p["residual"] else 0))


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition: s = x (+ residual); y = s / sqrt(mean(s^2) + eps) * w."""
    s = _x(t, case).double()
    out = {}
    if case.params["residual"]:
        s = s + t["residual"].double()
        out["residual"] = s
    out["y"] = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + EPS) * t["weight"].double()
    return out


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """The residual sum forward_cuda writes in place, with the primary's rigour."""
    if not case.params["residual"]:
        return []
    got, want = outputs["residual"], oracle_out["residual"]
    worst, at = worst_row_calc_diff(got, want)
    return [
        Metric("residual.calc_diff", calc_diff(got, want)),
        Metric("residual.worst_row_calc_diff", worst, detail={"row": at}),
    ]


# ---------------------------------------------------------------------------------------------- paths

LAYERNORM = "srt/layers/layernorm.py"


def compile_method(relpath: str, qualname: str, namespace: dict[str, Any], edit: tuple[str, str] | None = None):
    """`Class.method` of `sglang/<relpath>`, compiled from that file's own source (its AST), against
    `namespace`; with `edit` (old, new), one line of that source replaced first, which must match
    exactly once (a planted fault in a copy of the source). Tracebacks name the real file.

    Why not import the module: `sglang.srt.layers.layernorm` pulls in the model configs and several
    hundred SGLang modules (~7 s here) to reach 30 lines of torch."""
    file = require_root() / "sglang" / relpath
    if not file.is_file():
        raise Unavailable(f"{file} does not exist in this SGLang version")
    text = file.read_text()
    cls_name, _, meth_name = qualname.rpartition(".")
    tree = ast.parse(text, str(file))
    scope = tree.body
    if cls_name:
        scope = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name]
        scope = scope[0].body if scope else []
    found = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == meth_name]
    if len(found) != 1:
        raise Unavailable(f"{qualname} is not in sglang/{relpath} of this SGLang version")
    fn = found[0]
    fn.decorator_list = []
    src = ast.get_source_segment(text, fn, padded=True)
    filename = str(file)
    if edit is not None:
        old, new = edit
        if src.count(old) != 1:
            raise ValueError(f"the edit {old!r} matches {src.count(old)} times in {qualname}")
        src, filename = src.replace(old, new), f"<{relpath} with one line edited>"
    ns = dict(namespace)
    exec(compile(ast.parse(_dedent(src)), filename, "exec"), ns)
    return ns[meth_name]


def _dedent(src: str) -> str:
    lines = src.splitlines()
    cut = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[cut:] for line in lines) + "\n"


def norm_module(weight: torch.Tensor, eps: float = EPS) -> types.SimpleNamespace:
    """What forward_native reads of an RMSNorm(H, eps) built as DeepSeek-V4 builds its norms (no var
    size override, no fp32 residual, no HF cast)."""
    return types.SimpleNamespace(
        weight=weight,
        variance_epsilon=eps,
        hidden_size=weight.shape[0],
        variance_size_override=None,
        override_orig_dtype=None,
        fp32_residual=False,
        cast_x_before_out_mul=False,
    )


@functools.lru_cache(maxsize=4)
def forward_native(edit: tuple[str, str] | None = None) -> Callable[..., Any]:
    from typing import Optional, Union

    # the names its signature's annotations use, evaluated when the copy is defined
    ns = {"torch": torch, "nn": torch.nn, "Optional": Optional, "Tuple": tuple, "Union": Union}
    return compile_method(LAYERNORM, "RMSNorm.forward_native", ns, edit)


def run_native(t: dict, case: Case, edit: tuple[str, str] | None = None) -> dict[str, torch.Tensor]:
    self = norm_module(t["weight"])
    x = _x(t, case)
    if case.params["residual"]:
        y, residual = forward_native(edit)(self, x, t["residual"])
        return {"y": y, "residual": residual}
    return {"y": forward_native(edit)(self, x)}


def sglang_native(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """RMSNorm.forward_native, compiled from layernorm.py's source (see compile_method)."""
    return run_native(t, case)


def _cuda_call(t: dict, case: Case):
    layernorm = import_module("sglang.srt.layers.layernorm")
    H = case.params["H"]
    norm = layernorm.RMSNorm(H, eps=EPS).to(device=t["weight"].device, dtype=torch.bfloat16)
    norm.weight.data.copy_(t["weight"])
    base = t["x_buf"]
    residual = t.get("residual")

    def call():
        # forward_cuda writes x and residual in place with a residual: fresh copies each call
        x = base.clone()[:, :H]
        if residual is None:
            return norm.forward_cuda(x)
        return norm.forward_cuda(x.contiguous(), residual.clone())

    return call


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    out = _cuda_call(t, case)()
    if case.params["residual"]:
        return {"y": out[0], "residual": out[1]}
    return {"y": out}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        timed=_cuda_call,
        note="RMSNorm.forward_cuda: sgl_kernel.rmsnorm / fused_add_rmsnorm (FlashInfer's norm, AOT in sglang-kernel)",
    ),
    Path("sglang.native", sglang_native, note="RMSNorm.forward_native, SGLang's torch reference"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.layers.layernorm:RMSNorm.forward_cuda": (
        "the static per-tensor FP8 quant fusion, batch-invariant mode, cast_x_before_out_mul (JIT "
        "rmsnorm_hf / fused_add_rmsnorm) and post_residual_addition: none is on DeepSeek-V4's path"
    ),
}

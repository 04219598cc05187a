"""DeepSeek-V4 attention query: per-head RMSNorm (no weight) then RoPE on the last 64 dims, and the
inverse RoPE on the attention output before wo_a.

Call sites (SGLang 0.5.23):
  - `srt/models/deepseek_v4.py:DeepseekV4Attention._compute_q_b`: V4 has `q_head_norm = True`
    (`srt/configs/deepseek_v4.py`), so after `q = wq_b(q).view(-1, n_local_heads, 512)` it calls
    `fused_q_norm_rope(q, q_out, self.eps, self.freqs_cis, positions)` with `q_out = empty_like(q)`
    (`kernels/ops/attention/dsv4/norm_rope.py`; JIT CUDA `FusedQNormRopeKernel` in
    `jit/csrc/deepseek_v4/main_norm_rope.cuh`, one warp per (token, head)).
  - the same file's attention forward, before wo_a: `fused_rope_inplace(o[..., -64:], None,
    self.freqs_cis, positions=positions, inverse=True)` (JIT CUDA `FusedQKRopeKernel`, `rope.cuh`);
    on SM120 neither the fused rope + wo_a (`_fused_wo_a_arch_supported`: major 10) nor the aiter path
    takes it over (inventory rows 1 and 20).

Inputs, in the production layout:
  x          [T, H, 512] bf16, H = n_local_heads: 64 at attention TP1, 32 at TP2. `fn = "norm_rope"`:
             the wq_b output; `fn = "rope_inverse"`: the attention output o (its last 64 dims rotated)
  freqs      [rows, 64] fp32, `view_as_real(freqs_cis).flatten(-2)`: (cos, sin) interleaved per pair,
             the table both kernels read; `freqs_cis` (complex64 [rows, 32]) is its complex view
  positions  [T] int64 (the forward batch's) or int32 (both kernels take either)
Output `out` [T, H, 512] bf16.

Definition (from the CUDA sources): with eps = rms_norm_eps = 1e-6,
  norm_rope:     y = x / sqrt(mean(x^2 over 512) + eps); y[..., 448 + 2i : 448 + 2i + 2], read as the
                 complex y_r + i y_i, is multiplied by freqs_cis[pos, i] (interleaved "GPT-J" pairs)
  rope_inverse:  the last 64 dims times conj(freqs_cis[pos, i]); the first 448 are left as they are
The CUDA norm kernel rounds the normalised row to bf16 before rotating it (two roundings on the rope
dims); SGLang's Triton fused norm-rope rotates the fp32 value (one).

The table: `DeepseekV4Attention.__init__` builds it with `rope.py:precompute_freqs_cis`. A pure SWA
layer (compress_ratio 0) uses theta 10000 without YaRN; the C4 / C128 layers use compress_rope_theta
with YaRN (factor 16, original 65536, beta 32 / 1). DeepSeek-V4-Flash's config sets compress_rope_theta
160000 and max_position_embeddings 1048576 (its config.json on the Hugging Face Hub, as read, not
re-checked here; SGLang's defaults are 40000 and 65536). The table here is
built from the same YaRN definition in float64 and rounded once to fp32 (SGLang forms pos * freq in
fp32, which at position 1e6 is off by up to ~0.03 rad: a property of the table, not of these kernels,
which only read it). Flash tables have max(positions) + 1 rows (one case reaches 1048575).

SGLang implementations that run here:
  - `sglang.cuda`: the two JIT CUDA kernels (needs_cuda; the SM120 audit builds and launches them)
  - `sglang.triton_norm_rope` (norm_rope): `rope.py:fused_norm_rope_inplace_triton`, the Triton fused
    RMSNorm + RoPE the compressor uses (compressor_v2.py), fed the q rows as [T * H, 512], weight None
  - `sglang.triton_rope` / `sglang.triton_rope_flat` (rope_inverse): `rope.py:apply_rotary_emb_triton`,
    the ROCm / XPU body of `fused_rope_inplace`, per-token kernel and the batched flat-row kernel
    (`set_batched_rope(True)`, what ROCm's DeepseekV4 turns on)
A path that does not compute a case's `fn` is skipped for that case.
"""

from __future__ import annotations

import math

import torch

from harness.parity.op import ORACLE, Case, Guarded, Path, Unavailable, case_maker, guarded, import_module, load_by_path

OP = "q_norm_rope"
# one bf16 rounding of the output (two on the CUDA norm kernel's rope dims): calc_diff ~1e-6 with
# round-to-nearest; Triton's interpreter truncates fp32 -> bf16 stores, about 4x that: bf16's ceilings
DTYPE = "bf16"
PRIMARY = "out"
OUTPUTS = {"out": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
HEAD_DIM, ROPE_DIM = 512, 64
NOPE_DIM = HEAD_DIM - ROPE_DIM
EPS = 1e-6  # config.rms_norm_eps
MAX_POS = 1048576  # DeepSeek-V4-Flash max_position_embeddings
# (base, YaRN original length, factor, beta_fast, beta_slow) per layer kind; original 0: no YaRN
TABLES = {"swa": (10000.0, 0, 1.0, 32, 1), "compressed": (160000.0, 65536, 16.0, 32, 1)}
ROPE_PY = "kernels/ops/attention/dsv4/rope.py"


# ---------------------------------------------------------------------------------------------- table


def yarn_freqs(table: str, dim: int = ROPE_DIM) -> torch.Tensor:
    """The dim / 2 rotation frequencies of a layer kind, float64: base^(-2i/dim), and for YaRN the
    low frequencies divided by `factor`, blended linearly over the correction range
    [floor(d(beta_fast)), ceil(d(beta_slow))], d(r) = dim ln(L / (2 pi r)) / (2 ln base)."""
    base, original, factor, beta_fast, beta_slow = TABLES[table]
    freqs = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if original > 0:

        def d(r: float) -> float:
            return dim * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base))

        low, high = max(math.floor(d(beta_fast)), 0), min(math.ceil(d(beta_slow)), dim - 1)
        high = high + 0.001 if low == high else high
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        freqs = freqs / factor * ramp + freqs * (1 - ramp)
    return freqs


def rope_table(table: str, rows: int) -> torch.Tensor:
    """[rows, 64] fp32: (cos, sin) of pos * freq_i, interleaved, angles in float64, one rounding."""
    angle = torch.arange(rows, dtype=torch.float64)[:, None] * yarn_freqs(table)[None, :]
    return torch.stack([angle.cos(), angle.sin()], -1).flatten(1).float().contiguous()


def freqs_cis(freqs: torch.Tensor) -> torch.Tensor:
    """The complex64 [rows, 32] view SGLang's functions take (they call view_as_real on it again)."""
    return torch.view_as_complex(freqs.view(freqs.shape[0], -1, 2))


def rotate(x: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """float64 RoPE of the last 64 dims of x [T, H, D]: interleaved pairs times (cos +- i sin)[pos]."""
    f = freqs.double()[positions.long()].view(-1, 1, ROPE_DIM // 2, 2)  # [T, 1, 32, (cos, sin)]
    cos, sin = f[..., 0], f[..., 1] * (-1.0 if inverse else 1.0)
    tail = x[..., -ROPE_DIM:].unflatten(-1, (ROPE_DIM // 2, 2))
    re, im = tail[..., 0], tail[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], -1).flatten(-2)
    return torch.cat([x[..., :-ROPE_DIM], out], -1)


# ---------------------------------------------------------------------------------------------- cases


_case = case_maker(table="compressed", pos_dtype="int64", layout="decode", edge=False)


def cases() -> list[Case]:
    out = [
        _case("tiny_t3_h32_norm_rope_swa", {"tiny"}, fn="norm_rope", T=3, H=32, rows=4096, table="swa"),
        # padding (all-zero), tiny (eps dominates) and large rows; positions 0 and the table's last row
        _case(
            "tiny_t4_h32_norm_rope_edge", {"tiny"}, fn="norm_rope", T=4, H=32, rows=8192, edge=True, pos_dtype="int32"
        ),
        _case("tiny_t3_h32_rope_inverse", {"tiny"}, fn="rope_inverse", T=3, H=32, rows=8192),
    ]
    # DeepSeek-V4-Flash: decode batches (one position per request, up to 128K context) and prefill
    # chunks (consecutive positions), at attention TP1 (64 heads) and TP2 (32)
    for fn in ("norm_rope", "rope_inverse"):
        for h in (64, 32):
            for t in (1, 8, 128):
                out.append(_case(f"b{t}_h{h}_{fn}", {"flash"}, fn=fn, T=t, H=h, rows=131072))
            for t in (1024, 8192):
                out.append(_case(f"t{t}_h{h}_{fn}", {"flash"}, fn=fn, T=t, H=h, rows=131072, layout="prefill"))
        for tp, h in (("tp4", 16), ("tp8", 8)):  # heads per rank at TP4/TP8
            for t in (1, 8, 128):
                out.append(_case(f"{tp}_b{t}_h{h}_{fn}", {"flash", tp}, fn=fn, T=t, H=h, rows=131072))
            out.append(_case(f"{tp}_t8192_h{h}_{fn}", {"flash", tp}, fn=fn, T=8192, H=h, rows=131072, layout="prefill"))
        # the whole 1M-position table, the last rows included; int32 positions; the edge rows
        out.append(_case(f"b64_h64_{fn}_pos1m", {"flash"}, fn=fn, T=64, H=64, rows=MAX_POS))
        out.append(_case(f"b64_h64_{fn}_swa_int32", {"flash"}, fn=fn, T=64, H=64, rows=131072, table="swa",
                         pos_dtype="int32"))  # fmt: skip
        out.append(_case(f"t2048_h32_{fn}_edge", {"flash"}, fn=fn, T=2048, H=32, rows=131072, edge=True))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_positions(case: Case, gen: torch.Generator) -> torch.Tensor:
    """Decode: one random position per token, the first 0 and the second the table's last row;
    prefill: a chunk of consecutive positions ending at a random point of the table."""
    p = case.params
    T, rows = p["T"], p["rows"]
    if p["layout"] == "prefill":
        start = int(torch.randint(0, rows - T + 1, (1,), generator=gen))
        pos = torch.arange(start, start + T)
    else:
        pos = torch.randint(0, rows, (T,), generator=gen)
        pos[: min(T, 2)] = torch.tensor([0, rows - 1][: min(T, 2)])
    return pos.to(torch.int32 if p["pos_dtype"] == "int32" else torch.int64)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """x ~ N(0, 1) scaled per token by 2^U(-2, 2) (wq_b rows and attention outputs are O(1)). With
    `edge`: token 1 all zero (a padded row: 0 / sqrt(eps) = 0), token 2 at 1e-4 (mean square 1e-8,
    well under eps: the output is x / sqrt(eps) ~ 0.1, so eps is what is measured there), token 3 at 256."""
    p = case.params
    T, H = p["T"], p["H"]
    scale = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 4 - 2)
    x = torch.randn(T, H, HEAD_DIM, generator=gen) * scale
    if p["edge"]:
        x[1 % T] = 0.0
        x[2 % T] *= 1e-4 / scale[2 % T]
        x[3 % T] *= 256.0 / scale[3 % T]
    return {
        "x": x.to(torch.bfloat16).contiguous(),
        "freqs": rope_table(p["table"], p["rows"]),
        "positions": make_positions(case, gen),
    }


def cost(case: Case) -> tuple[float, float]:
    """norm_rope: the rows read and written (bf16), a 256 B table row per token; ~3 flops per element
    for the norm, 6 per rotated pair. rope_inverse: only the 64 rotated dims move."""
    p = case.params
    T, H = p["T"], p["H"]
    pos_bytes = 4 if p["pos_dtype"] == "int32" else 8
    if p["fn"] == "norm_rope":
        return float(T * H * HEAD_DIM * 2 * 2 + T * (ROPE_DIM * 4 + pos_bytes)), float(
            T * H * (3 * HEAD_DIM + 3 * ROPE_DIM)
        )
    return float(T * H * ROPE_DIM * 2 * 2 + T * (ROPE_DIM * 4 + pos_bytes)), float(T * H * 3 * ROPE_DIM)


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    x = t["x"].double()
    if case.params["fn"] == "norm_rope":
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS)
        return {"out": rotate(x, t["freqs"], t["positions"])}
    return {"out": rotate(x, t["freqs"], t["positions"], inverse=True)}


# ---------------------------------------------------------------------------------------------- paths


def _norm_rope_module():
    return import_module("sglang.kernels.ops.attention.dsv4.norm_rope")


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    g = _cuda_call(t, case)()
    return {"out": g.view, **g.result()}


def _cuda_call(t: dict, case: Case):
    """The production calls: fused_q_norm_rope into a fresh q_out, fused_rope_inplace on the tail of a
    copy (it works in place; the copy is made before timing)."""
    mod = _norm_rope_module()
    fc = freqs_cis(t["freqs"])
    # the buffers it writes sit inside guard bands (harness/parity/guard.py): a write past a row shows
    g = guarded(tuple(t["x"].shape), t["x"].dtype, t["x"].device)
    if case.params["fn"] == "norm_rope":

        def call() -> Guarded:
            mod.fused_q_norm_rope(t["x"], g.view, EPS, fc, t["positions"])
            return g

        return call
    g.view.copy_(t["x"])

    def call() -> Guarded:
        mod.fused_rope_inplace(g.view[..., -ROPE_DIM:], None, fc, positions=t["positions"], inverse=True)
        return g

    return call


def _only(case: Case, fn: str, what: str) -> None:
    if case.params["fn"] != fn:
        raise Unavailable(f"{what} computes {fn} only, this case is {case.params['fn']}")


def sglang_triton_norm_rope(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """rope.py:fused_norm_rope_inplace_triton on a copy of the rows, [T * H, 512], one position per row."""
    _only(case, "norm_rope", "fused_norm_rope_inplace_triton")
    rope = module or load_by_path(ROPE_PY)
    T, H, D = t["x"].shape
    rows = t["x"].clone().view(T * H, D)
    rope.fused_norm_rope_inplace_triton(rows, None, EPS, freqs_cis(t["freqs"]), t["positions"].repeat_interleave(H))
    return {"out": rows.view(T, H, D)}


def sglang_triton_rope(t: dict, case: Case, module=None, batched: bool = False) -> dict[str, torch.Tensor]:
    """rope.py:apply_rotary_emb_triton(o[..., -64:], freqs_cis, positions, inverse=True) on a copy, as
    fused_rope_inplace runs it on ROCm / XPU; `batched` selects its flat-row kernel."""
    _only(case, "rope_inverse", "apply_rotary_emb_triton")
    rope = module or load_by_path(ROPE_PY)
    o = t["x"].clone()
    before = rope._USE_BATCHED_ROPE
    rope.set_batched_rope(batched)
    try:
        rope.apply_rotary_emb_triton(o[..., -ROPE_DIM:], freqs_cis(t["freqs"]), positions=t["positions"], inverse=True)
    finally:
        rope.set_batched_rope(before)
    return {"out": o}


def sglang_triton_rope_flat(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return sglang_triton_rope(t, case, batched=True)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition (RMSNorm without weight, interleaved RoPE)"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        timed=_cuda_call,  # rope_inverse works in place: each timed call rotates once more (same work)
        note="norm_rope.py fused_q_norm_rope (main_norm_rope.cuh) / fused_rope_inplace(inverse=True) (rope.cuh)",
    ),
    Path(
        "sglang.triton_norm_rope",
        sglang_triton_norm_rope,
        note="rope.py fused_norm_rope_inplace_triton (the compressor's), q rows as [T*H, 512]",
    ),
    Path("sglang.triton_rope", sglang_triton_rope, note="rope.py apply_rotary_emb_triton, per-token kernel (ROCm/XPU)"),
    Path(
        "sglang.triton_rope_flat",
        sglang_triton_rope_flat,
        note="rope.py apply_rotary_emb_triton with set_batched_rope(True): the flat-row kernel (ROCm DeepseekV4)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsv4.norm_rope:fused_q_norm_rope": (
        "eps=None (no norm: V4.1's and DSpark's rope-only copy) and an fp8 q_out are not cased"
    ),
    "sglang.kernels.ops.attention.dsv4.norm_rope:fused_rope_inplace": (
        "inverse=True on q=o[..., -64:] with k=None only; the forward rotation and a k tensor are not cased"
    ),
}

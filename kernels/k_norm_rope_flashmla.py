"""DeepSeek-V4 SWA KV write: k RMSNorm + RoPE, FP8 quantization with UE8M0 scales, stored into the
FlashMLA-layout (V4, 584 B per token) paged cache at the given slots. Checked through its reader: what
each path writes is decoded by SGLang's own cache reader before it is compared with the oracle.

Call site: `srt/models/deepseek_v4.py DeepseekV4Attention._compute_kv_to_cache` calls
`token_to_kv_pool.set_swa_key_buffer_radix_fused_norm_rope(layer_id, swa_loc, kv=qkv_a[..., q_lora_rank:],
kv_weight=kv_norm.weight, eps=rms_norm_eps, freqs_cis, positions)`, which
(`srt/mem_cache/deepseek_v4_memory_pool.py`) calls `kernels/ops/attention/dsv4/norm_rope.py:
fused_k_norm_rope_flashmla(kv, kv_weight, eps, freqs_cis, positions, out_loc=swa_loc, kvcache, page_size=256,
layout=KVLayout.V4)`, the JIT kernel `FusedKNormRopeFlashMLAKernel` (`jit/csrc/deepseek_v4/main_norm_rope.cuh`).

Inputs, in the production layout:
  qkv_a      [T, 1024 + 512] bf16: the fused wq_a/wkv output; `kv` is its slice [:, 1024:] (q_lora_rank 1024),
             non-contiguous (row stride 1536), as production passes it
  kv_weight  [512] bf16, the kv_norm weight
  freqs_cis  [max_pos, 32] complex64 (the model's table; the kernel reads it as interleaved cos/sin)
  positions  [T] int64
  out_loc    [T] int32 SWA slots (page * 256 + offset); -1 = no write (out-of-window / padded rows)
  kvcache    [pages, 149760] uint8: 256-token V4 pages (harness/dsv4.py), filled with random bytes before the
             write, so bytes a writer must not touch are checkable
The definition (main_norm_rope.cuh, V4 branch), per token:
  y = x * rsqrt(mean(x^2) + eps) * w                 (fp32 in the kernel, x the bf16 input)
  y[448:] pair j = (y[448+2j], y[449+2j]) rotated by freqs_cis[pos, j] (complex multiply), stored bf16
  y[:448] per 64-value group g: e_g = ceil(log2(max(amax_g, 1e-4) / 448)), byte 127 + e_g at the token's
  scale row, fp8-e4m3(y / 2^e_g) (round to nearest even) in its data row. The pad byte is left as it was.

Outputs: `k` [T, 512], the written slots read back by SGLang's reader (`flash_mla_sm120._gather_and_dequant`,
the SM120 decode fallback's gather; kernels/kv_dequant.py checks that reader), rows at -1 zero and not
compared; `cache`, the whole cache after the write (uint8, for `stray_bytes`). The oracle's `k` is the exact
float64 y: the drift is the quantization, judged in units of the oracle's own encoding by `nope_err_ulps`
(fp8 ulps at the oracle's scale) and `rope_err_ulps` (bf16 ulps). A writer whose bytes are consistent with its
own decoder but not with the reader (a biased exponent, a scale row one slot off, rope in the wrong dims) shows
there, because nothing is decoded by the writer's own rule.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, case_maker, dsv4, function, import_module, interpreted

OP = "k_norm_rope_flashmla"
# fp8 nope values (4 significant bits) with power-of-two scales: calc_diff against the exact values is the
# fp8 rounding, ~3e-4, under fp8's default ceilings; the sharp checks are the ulp metrics below
DTYPE = "fp8"
PRIMARY = "k"
OUTPUTS = {"cache": "uint8"}  # what the kernel writes; `k` is the harness's read-back
TOLERANCE = (1e-2, 1e-1)
Q_LORA, HEAD, NOPE, ROPE, PAGE = 1024, 512, 448, 64, 256
EPS = 1e-6  # DeepSeekV4Config.rms_norm_eps
SCALE_FLOOR = 1e-4  # fmaxf(1e-4f, abs_max) in main_norm_rope.cuh
CEILINGS = {
    # round to nearest is <= 0.5 ulp; a path that rounds its source to bf16 first (the reference path,
    # SGLANG_DSV4_USE_BF16_KV_QUANT_SOURCE) adds <= 2^-5 of an fp8 ulp (bf16 keeps 5 more bits), 2^-4 where
    # that rounding truncates (Triton's interpreter: the CPU runs); 2^-6 more covers fp32 arithmetic before
    # the rounding. A scale one exponent too large is up to 1 ulp, one too small a clamp.
    "nope_err_ulps": 0.5 + 2.0**-4 + 2.0**-6,
    # bf16 rounding of the rotated pair is 0.5 ulp; rotating bf16-rounded inputs (the reference path's
    # bf16 norm) adds <= 0.5 * (|cos| + |sin|) <= 0.71 ulp: 1.25 bounds both
    "rope_err_ulps": 1.25,
    "stray_bytes": 0.0,
    "readers_disagree": 0.0,  # two exact decoders of the same bytes
}


_case = case_maker(T=1, pool_pages=2, positions="random", neg1=False, adversarial=False, max_pos=4096)


def cases() -> list[Case]:
    out = [
        _case("tiny_t3_decode", {"tiny"}, T=3),
        # slots cross a page boundary; consecutive positions as a prefill chunk writes them
        _case("tiny_t77_prefill_pagecross", {"tiny"}, T=77, positions="consecutive"),
        # padded rows (-1: no write), an all-zero kv row, a row whose group-3 weights put it under the
        # 1e-4 scale floor, a row at position 0 (rope = identity)
        _case("tiny_t40_neg1_adversarial", {"tiny"}, T=40, neg1=True, adversarial=True),
    ]
    # DeepSeek-V4-Flash: one KV head, so TP does not change the shapes; decode batches and prefill chunks
    for t in (1, 8, 64, 256):
        out.append(_case(f"b{t}_decode", {"flash"}, T=t, pool_pages=max(2, t // 64), max_pos=65536))
    for t in (2048, 8192):
        out.append(
            _case(f"t{t}_prefill", {"flash"}, T=t, pool_pages=t // PAGE + 2, positions="consecutive", max_pos=65536)
        )
    out.append(_case("t2048_neg1_adversarial", {"flash"}, T=2048, pool_pages=10, neg1=True, adversarial=True))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def freqs_table(max_pos: int) -> torch.Tensor:
    """[max_pos, 32] complex64: the RoPE table, theta 10000 over the 64 rope dims."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, ROPE, 2, dtype=torch.float64) / ROPE))
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """kv rows N(0,1) with per-token magnitudes 2^-3..2^3 (the norm removes them); weights exp(N(0, 0.3)) times
    a per-64-group power of two 2^-4..2^3, so the UE8M0 scales differ between groups and tokens."""
    p = case.params
    T, pages = p["T"], p["pool_pages"]
    qkv_a = torch.randn(T, Q_LORA + HEAD, generator=gen)
    qkv_a *= torch.pow(2.0, torch.randint(-3, 4, (T, 1), generator=gen).float())
    group = torch.pow(2.0, torch.randint(-4, 4, (HEAD // 64,), generator=gen).float()).repeat_interleave(64)
    weight = torch.exp(torch.randn(HEAD, generator=gen) * 0.3) * group
    if p["positions"] == "consecutive":
        positions = torch.randint(0, p["max_pos"] - T, (1,), generator=gen) + torch.arange(T)
    else:
        positions = torch.randint(0, p["max_pos"], (T,), generator=gen)
    pool = pages * PAGE
    start = int(torch.randint(0, pool, (1,), generator=gen))
    out_loc = (
        (start + torch.arange(T)) % pool if p["positions"] == "consecutive" else torch.randperm(pool, generator=gen)[:T]
    )
    if p["adversarial"]:
        qkv_a[1, Q_LORA:] = 0.0  # y = 0: every group at the scale floor
        positions[2] = 0
        qkv_a[3, Q_LORA + 192 : Q_LORA + 256] *= 1e-6  # group 3 of token 3 under the 1e-4 floor
    if p["neg1"]:
        out_loc[torch.randperm(T, generator=gen)[: max(1, T // 8)]] = -1
    return {
        "qkv_a": qkv_a.to(torch.bfloat16),
        "kv_weight": weight.to(torch.bfloat16),
        "freqs_cis": freqs_table(p["max_pos"]),
        "positions": positions.to(torch.int64),
        "out_loc": out_loc.to(torch.int32),
        "kvcache": torch.randint(0, 256, (pages, dsv4.page_bytes(PAGE)), generator=gen, dtype=torch.uint8),
    }


def _kv(t: dict) -> torch.Tensor:
    return t["qkv_a"][:, Q_LORA:]


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """A row at -1 is written nowhere: it has nothing to read back."""
    return {"k": (t["out_loc"] >= 0)[:, None]}


def cost(case: Case) -> tuple[float, float]:
    """Per token: 512 bf16 read, 584 B written, its position and slot; about 4 flops per value (square,
    scale, weight, quantize) and 6 per rope pair."""
    T = case.params["T"]
    return float(T * (HEAD * 2 + dsv4.TOKEN_BYTES + 12) + HEAD * 2), float(T * (4 * HEAD + 6 * ROPE // 2))


# ---------------------------------------------------------------------------------------------- oracle


def exact(kv: torch.Tensor, weight: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """float64 RMSNorm then RoPE of the last 64 dims (interleaved pairs): [T, D] for any D >= 64."""
    x = kv.double()
    y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS) * weight.double()
    rot = torch.view_as_complex(y[:, -ROPE:].reshape(-1, ROPE // 2, 2).contiguous())
    rot = rot * freqs[positions.long()].to(torch.complex128)
    return torch.cat([y[:, :-ROPE], torch.view_as_real(rot).reshape(-1, ROPE)], 1)


def scale_exponents(y: torch.Tensor, floor: float = SCALE_FLOOR) -> torch.Tensor:
    """[T, 7] the UE8M0 exponent of each 64-value nope group: ceil(log2(max(amax, floor) / 448))."""
    amax = y[:, :NOPE].double().reshape(y.shape[0], -1, dsv4.SCALE_GROUP).abs().amax(-1)
    return torch.ceil(torch.log2(amax.clamp(min=floor) / dsv4.FP8_MAX))


def encode(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact V4 encoding of float64 rows: (nope fp8 [T, 448], scale bytes uint8 [T, 7], rope bf16 [T, 64])."""
    e = scale_exponents(y)
    scaled = y[:, :NOPE].reshape(y.shape[0], -1, dsv4.SCALE_GROUP) / dsv4.pow2(e)[..., None]
    nope = scaled.reshape(y.shape[0], NOPE).to(torch.float8_e4m3fn)
    return nope, (e + 127).to(torch.uint8), y[:, NOPE:].to(torch.bfloat16)


def write_rows(cache: torch.Tensor, loc: torch.Tensor, nope8, scale_bytes, rope, page: int) -> torch.Tensor:
    """`cache` (a copy) with rows written at `loc` in the V4 page layout of harness/dsv4.py (written here, not
    SGLang's writer): data row page*P + off*576, scale row page*P + page_size*576 + off*8, pad byte untouched."""
    out = cache.clone()
    keep = loc >= 0
    loc = loc[keep].long()
    pg, off = loc // page, loc % page
    data = torch.cat([nope8[keep].view(torch.uint8), rope[keep].contiguous().view(torch.uint8)], 1)
    cols = torch.arange(dsv4.TOKEN_DATA, device=out.device)
    out[pg[:, None], off[:, None] * dsv4.TOKEN_DATA + cols] = data.to(out.device)
    groups = torch.arange(NOPE // dsv4.SCALE_GROUP, device=out.device)
    out[pg[:, None], page * dsv4.TOKEN_DATA + off[:, None] * 8 + groups] = scale_bytes[keep].to(out.device)
    return out


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"k": exact(_kv(t), t["kv_weight"], t["freqs_cis"], t["positions"])}


# ---------------------------------------------------------------------------------------------- reader


def read_back(cache: torch.Tensor, loc: torch.Tensor, page: int = PAGE) -> torch.Tensor:
    """The rows at `loc` decoded by SGLang's reader (`_gather_and_dequant`), [T, 512] float32; rows at -1 zero."""
    mod = import_module("sglang.kernels.ops.attention.flash_mla_sm120")
    keep = loc >= 0
    out = torch.zeros(loc.numel(), HEAD, dtype=torch.float32, device=loc.device)
    if bool(keep.any()):
        idx = loc[keep].to(torch.int32).view(1, 1, -1)
        kv = mod._gather_and_dequant(dsv4.paged_view(cache, page), idx, page)
        out[keep] = kv.reshape(-1, HEAD).float()
    return out


def read_back_triton(cache: torch.Tensor, loc: torch.Tensor, page: int = PAGE) -> torch.Tensor:
    """The same rows decoded by SGLang's other reader of this cache, the Triton dequantizer of the sparse
    prefill (kernels/kv_dequant.py's `sglang.triton`), [T, 512] float32; rows at -1 zero."""
    mod = "sglang.kernels.ops.attention.dsv4.dequant_k_cache"
    dequant = function(f"{mod}:dequantize_k_cache_paged_dsv4", f"{mod}:dequantize_k_cache_paged")
    keep = loc >= 0
    out = torch.zeros(loc.numel(), HEAD, dtype=torch.float32, device=loc.device)
    if bool(keep.any()):
        kv = dequant(cache, loc[keep].to(torch.int64), page)
        out[keep] = kv.reshape(-1, HEAD).float()
    return out


def _result(cache: torch.Tensor, t: dict) -> dict[str, torch.Tensor]:
    loc = t["out_loc"]
    return {"k": read_back(cache, loc), "k_triton_reader": read_back_triton(cache, loc), "cache": cache}


# ---------------------------------------------------------------------------------------------- metrics


def fp8_ulp(scaled: torch.Tensor) -> torch.Tensor:
    """The e4m3 ulp at |scaled| (float64): 2^(max(floor(log2|v|), -6) - 3); subnormals 2^-9."""
    _, p = torch.frexp(scaled.abs().clamp(min=2.0**-9))
    return torch.pow(2.0, (p - 1).clamp(min=-6).double() - 3)


def bf16_ulp(v: torch.Tensor) -> torch.Tensor:
    """The bf16 ulp at |v| (float64): 2^(max(floor(log2|v|), -126) - 7)."""
    _, p = torch.frexp(v.abs().clamp(min=2.0**-133))
    return torch.pow(2.0, (p - 1).clamp(min=-126).double() - 7)


def ulp_errors(got: torch.Tensor, y: torch.Tensor, floor: float = SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """|got - y| in units of the oracle encoding's ulp: ([T, 448] fp8 ulps at its scale, [T, 64] bf16 ulps)."""
    got = got.double()
    scale = dsv4.pow2(scale_exponents(y, floor)).repeat_interleave(dsv4.SCALE_GROUP, 1)
    nope = (got[:, :NOPE] - y[:, :NOPE]).abs() / (fp8_ulp(y[:, :NOPE] / scale) * scale)
    rope = (got[:, NOPE:] - y[:, NOPE:]).abs() / bf16_ulp(y[:, NOPE:])
    return nope.nan_to_num(nan=math.inf), rope.nan_to_num(nan=math.inf)


def touched_bytes(loc: torch.Tensor, shape: tuple[int, int], page: int, groups: int = NOPE // 64) -> torch.Tensor:
    """bool [pages, page_bytes]: the bytes a V4 write of `loc` (>= 0) may change (its data row, its scales)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    loc = loc[loc >= 0].long().cpu()
    pg, off = loc // page, loc % page
    mask[pg[:, None], off[:, None] * dsv4.TOKEN_DATA + torch.arange(dsv4.TOKEN_DATA)] = True
    mask[pg[:, None], page * dsv4.TOKEN_DATA + off[:, None] * 8 + torch.arange(groups)] = True
    return mask


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`nope_err_ulps` / `rope_err_ulps`: the worst read-back error in ulps of the oracle's encoding;
    `scale_mismatch`: scale bytes unlike the oracle's (no ceiling: a different floor is a convention, and the
    ulp metrics judge what it does to the values); `stray_bytes`: cache bytes changed outside the written
    slots' rows (the -1 rows and the pad byte included), ceiling 0."""
    loc = inputs["out_loc"].cpu()
    keep = loc >= 0
    y = oracle_out["k"].cpu()[keep]
    got = outputs["k"].cpu()[keep]
    nope, rope = ulp_errors(got, y)
    out = []
    for name, err in (("nope_err_ulps", nope), ("rope_err_ulps", rope)):
        worst = float(err.max()) if err.numel() else 0.0
        at = divmod(int(err.argmax()), err.shape[1]) if err.numel() else None
        out.append(Metric(name, worst, unit="ulp", detail={"at": list(at) if at else None}))
    # the two readers of this cache must decode the written bytes alike: bytes one of them reads otherwise
    # (a layout only one reader assumes) are caught here whatever the oracle says
    other = outputs["k_triton_reader"].cpu()[keep]
    out.append(Metric("readers_disagree", float((other != got).sum()), unit="count"))
    cache = outputs["cache"].cpu()
    before = inputs["kvcache"].cpu()
    written = cache[(loc[keep].long() // PAGE)[:, None], PAGE * dsv4.TOKEN_DATA + (loc[keep].long() % PAGE)[:, None] * 8
                    + torch.arange(NOPE // 64)]  # fmt: skip
    want = scale_exponents(y) + 127
    out.append(Metric("scale_mismatch", float((written.double() != want).sum()), unit="count"))
    stray = (cache != before) & ~touched_bytes(loc, tuple(cache.shape), PAGE)
    out.append(
        Metric(
            "stray_bytes",
            float(stray.sum()),
            unit="count",
            detail={"pages": stray.any(1).nonzero().flatten().tolist()[:8]},
        )
    )
    return out


# ---------------------------------------------------------------------------------------------- paths


def _cuda_call(t: dict, case: Case):
    mod = import_module("sglang.kernels.ops.attention.dsv4.norm_rope")
    cache = t["kvcache"].clone()

    def call():
        mod.fused_k_norm_rope_flashmla(
            _kv(t), t["kv_weight"], EPS, t["freqs_cis"], t["positions"], t["out_loc"], cache, PAGE
        )
        return cache

    return call


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return _result(_cuda_call(t, case)(), t)


def sglang_reference(t: dict, case: Case, ref: ModuleType | None = None) -> dict[str, torch.Tensor]:
    """SGLang's CPU-runnable pieces of the same write: the Triton `fused_norm_rope_inplace_triton` (bf16, in
    place), the test reference quantizer `quant_to_nope_fp8_rope_bf16_pack_triton` (Triton) and store
    `set_k_and_s_torch`. Its source is bf16 (as with SGLANG_DSV4_USE_BF16_KV_QUANT_SOURCE) and its scale floor
    1e-8, not the kernel's 1e-4. `ref` replaces the test reference module (tests/ops plant faults in a copy)."""
    rope = import_module("sglang.kernels.ops.attention.dsv4.rope")
    ref = ref or import_module("sglang.test.kernels.deepseek_v4.k_cache_reference")
    kv = _kv(t).contiguous()
    rope.fused_norm_rope_inplace_triton(kv, t["kv_weight"], EPS, t["freqs_cis"], t["positions"])
    keep = t["out_loc"] >= 0
    pack = ref.quant_to_nope_fp8_rope_bf16_pack_triton(kv[keep].contiguous())
    if interpreted():
        # Triton's interpreter converts fp32 -> float8e4nv wrongly (a mantissa carry does not reach the
        # exponent: 127.0 -> 64.0; ties go away from zero): the fp8 values are re-cast here with torch's
        # round-to-nearest-even, as the compiled kernel's cvt.rn does, from the scale bytes the kernel wrote
        scale = dsv4.pow2(pack.scale_k_nope_ue8m0.long() - 127).repeat_interleave(dsv4.SCALE_GROUP, 1)
        nope = (kv[keep][:, :NOPE].double() / scale).clamp(-dsv4.FP8_MAX, dsv4.FP8_MAX)
        pack.k_nope_fp8.copy_(nope.to(torch.float8_e4m3fn))
    cache = t["kvcache"].clone()
    ref.set_k_and_s_torch(cache, t["out_loc"][keep].contiguous(), pack, PAGE)
    return _result(cache, t)


def oracle_bytes(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The oracle's exact encoding, written by this file's layout and read by SGLang's reader: shows that the
    byte layout the oracle assumes is the one SGLang reads."""
    y = exact(_kv(t), t["kv_weight"], t["freqs_cis"], t["positions"])
    cache = write_rows(t["kvcache"], t["out_loc"], *encode(y), PAGE)
    return _result(cache, t)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 RMSNorm + RoPE from the definition (before quantization)"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        timed=_cuda_call,
        note="norm_rope.fused_k_norm_rope_flashmla (JIT main_norm_rope.cuh), read back by _gather_and_dequant",
    ),
    Path(
        "sglang.reference",
        sglang_reference,
        note="Triton fused_norm_rope_inplace_triton + test reference quantizer/store, read back by the reader",
    ),
    Path("oracle.bytes", oracle_bytes, note="the oracle's exact V4 encoding read back by SGLang's reader"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsv4.norm_rope:fused_k_norm_rope_flashmla": (
        "V4 layout, 256-token pages, bf16 kv only; not the ROCm q-rope launch nor the V4.1 layouts"
    ),
}

UNJUDGED = {
    "scale_mismatch": "a scale byte unlike the oracle's is a convention where paths floor the amax differently "
    "(the test reference at 1e-8, the kernel at 1e-4): nope_err_ulps judges what it does to the values",
}

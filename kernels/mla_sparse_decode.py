"""DeepSeek-V4 sparse MLA decode: what SGLang runs on SM120 in place of FlashMLA's sparse FP8 decode.

Call site: `srt/layers/attention/deepseek_v4_backend.py` calls `flash_mla_with_kvcache_sm120(q,
k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices_in_kvcache, extra_topk_length,
head_dim_v=512, softmax_scale=512**-0.5)`; on SM120 the default is FlashInfer's SM120 sparse MLA,
`SGLANG_SM120_FLASHMLA_BACKEND=triton|torch` selects the fallbacks measured here.

Inputs, in the production layout:
  q            [B, 1, H, 512] bf16: 448 nope + 64 rope (rope already applied); H 64 (TP=1) or 32 (TP=2)
  k_cache      the SWA cache, V4 paged FP8 (harness/dsv4.py), 256-token pages, as raw bytes
  indices      [B, 1, topk] int32 token slots (page * page_size + offset), -1 = none
  topk_length  [B] int32 (optional): entries at or past it are ignored, whatever they hold
  attn_sink    [H] fp32 (optional): joins the softmax denominator only (FlashMLA's rule)
  extra_*      the compressed c4 cache (64-token pages, top-k 512), its indices and lengths

Outputs are named by what they mean, so conventions never need guessing: `out` [B, H, 512];
`lse` is the natural-log LSE without the sink (FlashMLA, the PyTorch fallback); `lse_with_sink`
includes it (the Triton fallback returns that one).
"""

from __future__ import annotations

import contextlib
import math

import torch

from harness.parity.op import (
    ORACLE,
    SM90,
    SM120,
    Case,
    Path,
    Unavailable,
    case_maker,
    dsv4,
    guarded_allocations,
    import_module,
    interpreted,
    keep_first_config,
    load_by_path,
    pinned_config,
    require,
)

OP = "mla_sparse_decode"
# The KV cache is fp8, but the oracle dequantizes it exactly, so what is left is bf16 rounding of q,
# of intermediate sums and of the output: the bf16 ceiling applies.
DTYPE = "bf16"
# the log-sum-exp in natural-log units, computed in fp32 from the same scores: a relative error e in the
# softmax's sum moves it by e, so fp32 accumulation gives ~1e-6 (the SGLang paths measure ~4e-7 on the
# tiny cases); FA2's golden measures 5.4e-4 (its scores from bf16-rounded products): its own limit
CEILINGS = {
    "lse.max_abs": 1e-4,
    "lse_with_sink.max_abs": 1e-4,
    "flashinfer.fa2:lse.max_abs": 2e-3,
}
PRIMARY = "out"
OUTPUTS = {"out": "bfloat16"}  # the LSE outputs are per-path conventions (lse, lse_with_sink)
TOLERANCE = (1e-2, 1e-2)
SM_SCALE = dsv4.DIM**-0.5


_case = case_maker(
    page=256, n_main=16384, extra_topk=0, extra_page=64, n_extra=16384, topk_length=True, sink=True, empty_row=False
)
NEGATIVE_ROPE = 8.0  # scores="negative": keys' rope dims near +8, q's near -8: 64 x -64 / sqrt(512) ~ -181


def cases() -> list[Case]:
    tiny = dict(n_main=512, n_extra=256)
    out = [
        _case("tiny_b3_h4_swa64_c4x64", {"tiny"}, B=3, H=4, topk=64, extra_topk=64, **tiny),
        _case("tiny_b2_h4_topk64_nosink_nolen", {"tiny"}, B=2, H=4, topk=64, sink=False, topk_length=False, **tiny),
        _case("tiny_b3_h2_c4x64_emptyrow", {"tiny"}, B=3, H=2, topk=64, extra_topk=64, empty_row=True, **tiny),
        # every score of every row near -181: exp of any of them underflows fp32, so only a softmax that
        # subtracts the row's own running maximum (not 0, not a constant) gets them right. No sink: beside
        # a sink of O(1) the right output is ~e^-170, which no bf16 holds
        _case("tiny_b2_h4_scores_all_negative", {"tiny"}, B=2, H=4, topk=64, sink=False, scores="negative", **tiny),
        # the slots past each row's length point into a page of 0xFF bytes (NaN values, an infinite scale, as
        # memory never written may hold): a path that reads them and masks after the arithmetic shows NaN
        _case("tiny_b3_h4_c4x64_tail_poisoned", {"tiny"}, B=3, H=4, topk=64, extra_topk=64, tail="poisoned", **tiny),
    ]
    # DeepSeek-V4-Flash: a c4 layer reads the SWA window (128) plus 512 compressed tokens.
    for h in (64, 32):
        for b in (1, 8, 32, 128):
            out.append(_case(f"b{b}_h{h}_swa128_c4x512", {"flash"}, B=b, H=h, topk=128, extra_topk=512))
        for b in (8, 128):
            out.append(_case(f"b{b}_h{h}_topk512", {"flash"}, B=b, H=h, topk=512))
        out.append(_case(f"b32_h{h}_swa128_c4x512_nosink", {"flash"}, B=32, H=h, topk=128, extra_topk=512, sink=False))
        out.append(
            _case(f"b32_h{h}_swa128_c4x512_nolen", {"flash"}, B=32, H=h, topk=128, extra_topk=512, topk_length=False)
        )
        out.append(
            _case(f"b8_h{h}_swa128_c4x512_emptyrow", {"flash"}, B=8, H=h, topk=128, extra_topk=512, empty_row=True)
        )
    # the shapes users run beyond TP1/TP2 (nightly and the tp4-tp8 profile; the PR profile keeps b1/b8 at 64/32):
    # 16 and 8 heads per rank at TP4/TP8 (sglang#38969 aborted at 8 heads x top-k 128; flashinfer#5135 has no
    # kernel for 16 heads x top-k 512 prefill), c128 layers (2 compressed tokens per 256-token page, top-k
    # ceil(L/128) aligned to 64: 64..8192), SWA-only layers (top-k 128, no extra cache), and MTP verify batches
    # of B x (n+1) rows on either side of the 64-row decode/prefill switch
    for tp, h in (("tp4", 16), ("tp8", 8)):
        for b in (1, 8, 32, 128):
            out.append(_case(f"{tp}_b{b}_h{h}_swa128_c4x512", {"flash", tp}, B=b, H=h, topk=128, extra_topk=512))
        out.append(_case(f"{tp}_b8_h{h}_topk512", {"flash", tp}, B=8, H=h, topk=512))
        out.append(
            _case(f"{tp}_b8_h{h}_swa128_c128x1024_p2", {"flash", tp}, B=8, H=h, topk=128, extra_topk=1024, extra_page=2)
        )
    for h in (64, 32):
        out.append(
            _case(f"c128_b8_h{h}_swa128_c128x1024_p2", {"flash"}, B=8, H=h, topk=128, extra_topk=1024, extra_page=2)
        )
        out.append(
            _case(f"c128_b1_h{h}_swa128_c128x8192_p2", {"flash"}, B=1, H=h, topk=128, extra_topk=8192, extra_page=2)
        )
        out.append(_case(f"swa_b32_h{h}_swa128_only", {"flash"}, B=32, H=h, topk=128))
        for rows in (60, 64, 68):  # 15/16/17 requests x (MTP next_n 3 + 1)
            out.append(
                _case(f"mtp_b{rows}_h{h}_swa128_c4x512", {"flash", "mtp"}, B=rows, H=h, topk=128, extra_topk=512)
            )
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _cache(n: int, page: int, gen: torch.Generator, rope_offset: float = 0.0) -> torch.Tensor:
    """Random K rows, packed. Row magnitudes spread over 2^-2..2^1 so the UE8M0 scales vary while the
    scores (q.k / sqrt(512), q ~ N(0, 1)) stay O(1), as after DeepSeek-V4's KV norm: the softmax is
    spread over many tokens rather than decided by one. `rope_offset` moves every key's rope dims."""
    k = torch.randn(n, dsv4.DIM, generator=gen) * torch.pow(2.0, torch.randint(-2, 2, (n, 1), generator=gen).float())
    k[:, dsv4.DIM - dsv4.ROPE :] += rope_offset
    return dsv4.pack_pages(*dsv4.quantize_v4(k), page)


def _indices(B: int, topk: int, n: int, with_length: bool, empty_row: bool, gen: torch.Generator, poisoned: int = 0):
    """Slots into n tokens; with `poisoned` > 0, the slots past each row's length point into the `poisoned`
    tokens that follow the n."""
    idx = torch.stack([torch.randperm(n, generator=gen)[:topk] for _ in range(B)]).to(torch.int32)
    length = None
    if with_length:
        # entries past the length keep real-looking slots: an implementation that ignores
        # topk_length reads them and is caught
        length = torch.randint(topk // 2, topk + 1, (B,), generator=gen, dtype=torch.int32)
        length[0] = topk
        if poisoned:
            past = torch.arange(topk)[None, :] >= length[:, None]
            idx = torch.where(past, n + torch.randint(0, poisoned, idx.shape, generator=gen, dtype=torch.int32), idx)
    else:
        idx[-1, 3 * topk // 4 :] = -1  # trailing padding
        holes = torch.randperm(topk, generator=gen)[: max(1, topk // 16)]
        idx[0, holes] = -1  # and holes inside a row
    if empty_row:
        idx[-1] = -1
        if length is not None:
            length[-1] = 0
    return idx.view(B, 1, topk), length


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    B, H = p["B"], p["H"]
    negative = p.get("scores") == "negative"
    q = torch.randn(B, 1, H, dsv4.DIM, generator=gen)
    if negative:
        q[..., dsv4.DIM - dsv4.ROPE :] -= NEGATIVE_ROPE
    t = {
        "q": q.to(torch.bfloat16),
        "k_cache": _cache(p["n_main"], p["page"], gen, NEGATIVE_ROPE if negative else 0.0),
    }
    poisoned = p.get("tail") == "poisoned"
    if poisoned:  # one page of 0xFF after the real ones, the slots past each length into it
        t["k_cache"] = torch.cat([t["k_cache"], torch.full_like(t["k_cache"][:1], 0xFF)])
    t["indices"], length = _indices(
        B, p["topk"], p["n_main"], p["topk_length"], p["empty_row"], gen, p["page"] if poisoned else 0
    )
    if length is not None:
        t["topk_length"] = length
    if p["sink"]:
        # sinks from negligible to dominant next to the LSE of a few hundred O(1) scores
        t["attn_sink"] = torch.rand(H, generator=gen) * 8.0
    if p["extra_topk"]:
        t["extra_k_cache"] = _cache(p["n_extra"], p["extra_page"], gen)
        if poisoned:
            t["extra_k_cache"] = torch.cat([t["extra_k_cache"], torch.full_like(t["extra_k_cache"][:1], 0xFF)])
        t["extra_indices"], length = _indices(
            B, p["extra_topk"], p["n_extra"], p["topk_length"], p["empty_row"], gen, p["extra_page"] if poisoned else 0
        )
        if length is not None:
            t["extra_topk_length"] = length
    return t


def _selected(indices: torch.Tensor, length: torch.Tensor | None) -> torch.Tensor:
    """[B, topk] bool: the entries that take part."""
    idx = indices[:, 0]
    keep = idx >= 0
    if length is not None:
        keep &= torch.arange(idx.shape[1], device=idx.device)[None, :] < length[:, None].to(idx.device)
    return keep


def _has_any(t: dict, case: Case) -> torch.Tensor:
    keep = _selected(t["indices"], t.get("topk_length")).any(1)
    if "extra_indices" in t:
        keep |= _selected(t["extra_indices"], t.get("extra_topk_length")).any(1)
    return keep


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """An LSE is undefined for a row that attends to nothing (conventions differ: -inf, +inf)."""
    rows = _has_any(t, case)[:, None]
    return {"lse": rows, "lse_with_sink": rows if "attn_sink" not in t else torch.ones_like(rows)}


def cost(case: Case) -> tuple[float, float]:
    """The least a decode step must move and compute: each selected token's 584 B read once, q and
    out in bf16, the int32 indices; QK and PV over 512 dims for every head."""
    p = case.params
    tokens = p["topk"] + p["extra_topk"]
    nbytes = p["B"] * tokens * (dsv4.TOKEN_BYTES + 4) + 2 * p["B"] * p["H"] * dsv4.DIM * 2
    flops = 4.0 * p["B"] * p["H"] * tokens * dsv4.DIM
    return float(nbytes), flops


# ---------------------------------------------------------------------------------------------- paths


def _views(t: dict, case: Case):
    p = case.params
    k = dsv4.paged_view(t["k_cache"], p["page"])
    ek = dsv4.paged_view(t["extra_k_cache"], p["extra_page"]) if "extra_k_cache" in t else None
    return k, ek


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 attention over the exactly dequantized selected tokens."""
    p = case.params
    kv = [(dsv4.dequantize_pages(t["k_cache"], p["page"]), t["indices"], t.get("topk_length"))]
    if "extra_k_cache" in t:
        kv.append(
            (dsv4.dequantize_pages(t["extra_k_cache"], p["extra_page"]), t["extra_indices"], t.get("extra_topk_length"))
        )
    keys, keep = [], []
    for exact, idx, length in kv:
        keys.append(exact[idx[:, 0].clamp(min=0).long()])  # [B, topk, 512]
        keep.append(_selected(idx, length))
    K, keep = torch.cat(keys, 1), torch.cat(keep, 1)
    K = torch.where(keep[..., None], K, 0.0)  # what is not selected takes no part, whatever it holds
    q = t["q"][:, 0].double()  # [B, H, 512]
    s = torch.einsum("bhd,btd->bht", q, K) * SM_SCALE
    s = s.masked_fill(~keep[:, None, :], -math.inf)
    lse = torch.logsumexp(s, -1)  # -inf for a row with nothing selected
    w = torch.exp(s - torch.where(lse.isfinite(), lse, 0.0)[..., None])
    out = torch.einsum("bht,btd->bhd", w, K)
    lse_with_sink = lse
    if "attn_sink" in t:
        lse_with_sink = torch.logaddexp(lse, t["attn_sink"].double()[None, :])
        out = out * torch.exp(lse - lse_with_sink)[..., None]
    return {"out": out, "lse": lse, "lse_with_sink": lse_with_sink}


def _fallback(fn, t: dict, case: Case):
    """SGLang's two fallbacks share one signature: (q, k_cache, indices, topk_length, attn_sink,
    head_dim_v, softmax_scale, extra_k_cache, extra_indices, extra_topk_length) -> (out, lse)."""
    k, ek = _views(t, case)
    out, lse = fn(
        t["q"],
        k,
        t["indices"],
        t.get("topk_length"),
        t.get("attn_sink"),
        dsv4.DIM,
        SM_SCALE,
        extra_k_cache=ek,
        extra_indices=t.get("extra_indices"),
        extra_topk_length=t.get("extra_topk_length"),
    )
    return out[:, 0], lse[..., 0]


TRITON_FILE = "kernels/ops/attention/flash_mla_sm120_triton.py"


def sglang_triton(t: dict, case: Case, config: dict | None = None, file: str = TRITON_FILE, edit=None) -> dict:
    """flash_mla_sparse_decode_triton as SGLang calls it (autotuned on a GPU, its first config under the
    interpreter), or with one autotune `config` pinned; every tensor it allocates inside guard bands."""
    mod = load_by_path(file, edit=edit)
    kernel = mod._tiled_sparse_decode_kernel
    if interpreted():
        keep_first_config(kernel)
    with contextlib.ExitStack() as stack:
        if config is not None:
            stack.enter_context(pinned_config(kernel, **config))
        allocs = stack.enter_context(guarded_allocations(mod))
        out, lse = _fallback(mod.flash_mla_sparse_decode_triton, t, case)
        stray = allocs.result()
    return {"out": out, ("lse_with_sink" if "attn_sink" in t else "lse"): lse, **stray}  # its LSE includes the sink


# SGLang's autotune list for the kernel: a GPU picks one per top-k by timing, so each may be what an RTX PRO
# 6000 runs; each is pinned on its own. Under the interpreter num_warps and num_stages change nothing, so there
# only BLOCK_T 32 is a program the plain path (the first config, BLOCK_T 16) does not already run.
TRITON_CONFIGS = {
    "t16w4": {"BLOCK_T": 16, "num_warps": 4},
    "t16w8": {"BLOCK_T": 16, "num_warps": 8},
    "t32w8": {"BLOCK_T": 32, "num_warps": 8},
}


def _triton_pinned(label: str):
    config = TRITON_CONFIGS[label]

    def run(t: dict, case: Case) -> dict[str, torch.Tensor]:
        if interpreted() and config["BLOCK_T"] == 16:
            raise Unavailable("under Triton's interpreter this is sglang.triton's program (num_warps changes nothing)")
        return sglang_triton(t, case, config)

    return run


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.kernels.ops.attention.flash_mla_sm120")
    out, lse = _fallback(mod._sm120_sparse_decode_fwd, t, case)
    return {"out": out, "lse": lse}


def flashinfer_sm120(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The SM120 default, through SGLang's own entry point (page split to 64 and split-K included)."""
    mod = import_module("sglang.kernels.ops.attention.flash_mla_sm120")
    mod._sm120_default_backend = "flashinfer"  # read once at import; pin it whatever the env said
    k, ek = _views(t, case)
    out, _ = mod.flash_mla_with_kvcache_sm120(
        q=t["q"],
        k_cache=k,
        indices=t["indices"],
        topk_length=t.get("topk_length"),
        attn_sink=t.get("attn_sink"),
        head_dim_v=dsv4.DIM,
        softmax_scale=SM_SCALE,
        extra_k_cache=ek,
        extra_indices_in_kvcache=t.get("extra_indices"),
        extra_topk_length=t.get("extra_topk_length"),
    )
    return {"out": out.reshape(t["q"].shape[0], t["q"].shape[2], -1)}


def flashinfer_fa2(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """FlashInfer's FA2 MLA over the selected tokens: page size 1, the full 512-wide dequantized row as
    ckv, kpe and q_pe zero. Its LSE is base 2; the sink is applied afterwards from it. A row with
    nothing selected gets one dummy token and is then set to FlashMLA's answer (0)."""
    o, lse2 = _fa2_call(t, case)()
    lse = lse2.float() * math.log(2.0)
    out = o.float()
    if "attn_sink" in t:
        out = out * torch.sigmoid(lse - t["attn_sink"][None, :])[..., None]
    empty = ~_has_any(t, case)
    out[empty], lse[empty] = 0.0, -math.inf
    return {"out": out.to(torch.bfloat16), "lse": lse}


def _fa2_call(t: dict, case: Case):
    """Dequantize, gather and plan; return the call that runs FlashInfer's kernel alone (what is timed)."""
    flashinfer = require("flashinfer")
    p, dev = case.params, t["q"].device
    B, H = p["B"], p["H"]
    parts, keeps, offset = [], [], 0
    for cache, page, idx, length in (
        ("k_cache", "page", "indices", "topk_length"),
        ("extra_k_cache", "extra_page", "extra_indices", "extra_topk_length"),
    ):
        if cache not in t:
            continue
        exact = dsv4.dequantize_pages(t[cache], p[page])
        parts.append(exact)
        keeps.append((t[idx][:, 0].long() + offset, _selected(t[idx], t.get(length))))
        offset += exact.shape[0]
    ckv = torch.cat(parts).to(torch.bfloat16).view(offset, 1, dsv4.DIM)
    rows, lens = [], []
    for b in range(B):
        sel = torch.cat([ix[b][k[b]] for ix, k in keeps])
        rows.append(sel if sel.numel() else torch.zeros(1, dtype=torch.long, device=dev))
        lens.append(rows[-1].numel())
    lens_t = torch.tensor(lens, dtype=torch.int32, device=dev)
    kv_indptr = torch.cat([torch.zeros(1, dtype=torch.int32, device=dev), lens_t.cumsum(0).int()])
    wrapper = flashinfer.mla.BatchMLAPagedAttentionWrapper(
        torch.empty(256 << 20, dtype=torch.int8, device=dev), backend="fa2"
    )
    wrapper.plan(
        torch.arange(B + 1, dtype=torch.int32, device=dev),
        kv_indptr,
        torch.cat(rows).int(),
        lens_t,
        H,
        dsv4.DIM,
        dsv4.ROPE,
        1,
        False,
        SM_SCALE,
        torch.bfloat16,
        torch.bfloat16,
    )
    q_nope, q_pe = t["q"][:, 0].contiguous(), torch.zeros(B, H, dsv4.ROPE, dtype=torch.bfloat16, device=dev)
    kpe = torch.zeros(offset, 1, dsv4.ROPE, dtype=torch.bfloat16, device=dev)
    return lambda: wrapper.run(q_nope, q_pe, ckv, kpe, return_lse=True)


def flashmla_legacy(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """FlashMLA's legacy V4 sparse decode (`use_legacy=True`, as SGLang calls it for the
    non-interleaved V4 layout). It takes 64 or 128 heads: TP=2's 32 are padded with zero q rows,
    as SGLang pads them."""
    out, lse = _flashmla_call(t, case)()
    H = case.params["H"]
    return {"out": out[:, 0, :H], "lse": lse[:, :H, 0]}


def _flashmla_call(t: dict, case: Case):
    flash_mla = require("flash_mla")
    p = case.params
    H, Hp = p["H"], max(64, p["H"])
    q, sink = t["q"], t.get("attn_sink")
    if Hp != H:
        q = torch.cat([q, q.new_zeros(q.shape[0], 1, Hp - H, q.shape[3])], 2)
        sink = None if sink is None else torch.cat([sink, sink.new_zeros(Hp - H)])
    k, ek = _views(t, case)
    meta, _ = flash_mla.get_mla_metadata()
    return lambda: flash_mla.flash_mla_with_kvcache(
        q,
        k,
        None,
        None,
        dsv4.DIM,
        meta,
        softmax_scale=SM_SCALE,
        is_fp8_kvcache=True,
        indices=t["indices"],
        attn_sink=sink,
        extra_k_cache=ek,
        extra_indices_in_kvcache=t.get("extra_indices"),
        topk_length=t.get("topk_length"),
        extra_topk_length=t.get("extra_topk_length"),
        use_legacy=True,
    )


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 over the exact dequantization"),
    Path("flashinfer.fa2", flashinfer_fa2, golden=True, needs_cuda=True, timed=_fa2_call),
    Path(
        "flashmla.legacy",
        flashmla_legacy,
        golden=True,
        archs=SM90,
        timed=_flashmla_call,
        note="sgl-flash-mla's legacy sm90 V4 kernel; no SM120 build exists",
    ),
    Path("sglang.triton", sglang_triton, note="flash_mla_sparse_decode_triton, loaded by file path"),
    *(
        Path(f"sglang.triton.{label}", _triton_pinned(label), note=f"the same, autotune config {config} pinned")
        for label, config in TRITON_CONFIGS.items()
    ),
    Path("sglang.torch", sglang_torch, note="_sm120_sparse_decode_fwd"),
    Path(
        "flashinfer.sm120",
        flashinfer_sm120,
        archs=SM120,
        env={"SGLANG_SM120_FLASHMLA_BACKEND": "flashinfer"},
        note="the SM120 default: FlashInfer's SM120 sparse MLA via flash_mla_with_kvcache_sm120",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
_DECODE_CASES = (
    "H 64/32/16/8 (TP1..TP8), SWA 128 + c4 x 512, c128 x 1024 and x 8192 (2-token pages), SWA-only, MTP verify "
    "rows 60/64/68 (GPU cases); not V4.1's ratio-1/2 extra caches (pages of 256/128 tokens), nor top-k 1152"
)
COVERS = {
    "sglang.kernels.ops.attention.flash_mla_sm120:flash_mla_with_kvcache_sm120": _DECODE_CASES,
    "sglang.kernels.ops.attention.flash_mla_sm120:_flash_mla_flashinfer": _DECODE_CASES,
    "sglang.kernels.ops.attention.flash_mla_sm120:_flash_mla_sm120_prefill": "one case over 64 rows (B=128)",
    "sglang.kernels.ops.attention.flash_mla_sm120:_split_kv_pages_to_64": "only as the decode entry calls it",
    "sglang.kernels.ops.attention.flash_mla_sm120:_page_mark_kernel": "only as the decode entry calls it",
    "sglang.kernels.ops.attention.flash_mla_sm120:_page_split_kernel": "only as the decode entry calls it",
}

"""DeepSeek-V4.1 FP4 index logits: the scores of the ratio-1/2 index layers (20 c1 and 18 c2 layers of
V4.1-Flash), from FP4 queries against the paged FP4 index-K cache, that choose the 512 compressed
positions each query row attends to. What SM120 runs is DeepGEMM's FP8xFP4 MQA logits.

Call sites, and how SM120 selects them (v41_indexer/__init__.py: `is_sm100_or_newer()` is capability
major >= 10, so SM120 takes what was written for SM100):
  - decode and MTP verify: `FullTopKIndexer._deep_gemm_decode` (v41_indexer/full_topk.py) takes
    `get_deep_gemm_decode_data` (scoring.py): `index_q_rope_pack_weights` (JIT CUDA,
    fp4_indexer_rope.py: RoPE on the last 64 dims, fake FP4 then the indexer's FP4 pack, and the head
    weights float(bf16(raw * scale))), then `DeepGEMMDecodeData.paged_logits_args` (next_n rows per
    request: q viewed [B, next_n, H, 64], lengths [B, next_n], the page table's first row of each
    request) and `deep_gemm_fp4_paged_mqa_logits` (index_logits.py: DeepGEMM
    `fp8_fp4_paged_mqa_logits`, clean_logits False, logits fp32 since `index_logits_dtype()` is bf16
    only on major 10), then the top-k (another op's). The schedule is DeepGEMM's own
    `get_paged_mqa_logits_metadata(lens.view(-1, next_n), 64, num_sms)` (`force_deep_gemm_metadata` on
    SM120: its FP4 kernel splits the KV at 128). Batches over 4096 rows are split
    (`_SM120_INDEXER_M_CHUNK`); no case here reaches that.
  - prefill: `FullTopKIndexer._deep_gemm_prefill` (needs `has_dense_fp4_indexer()`: deep_gemm has
    `fp8_fp4_mqa_logits`) takes `get_deep_gemm_prefill_data`, gathers the flattened K of each request
    (`get_low_ratio_index_k_fp4`) and scores it in row tiles through `score_tiles` ->
    `flat_index_logits_tiles` (DeepGEMM `fp8_fp4_mqa_logits`, ks = the request's first column,
    ke = ks + the row's length, width max(lens per request) aligned to 64).
  - not on SM120: the torch indexer (SM90 and others) scores fake-quantized bf16 queries
    (`_rope_fq4`) with SGLang's Triton `fp4_index_logits_decode` (decode off SM90),
    `fp4_index_logits_paged` (decode on SM90) or, in prefill, `_score_chunks` (torch einsum over
    `get_index_k_dequant`'s bf16 K). These are the CPU paths here: the same scores, with bf16 roundings.

Inputs, in the production layout (built here from SGLang's writers' math, fp4_indexer.py
`_index_k_rope_pack_kernel` and fp4_indexer_rope.cuh `index_rope_quant_pack`, not by calling them):
  q_raw        [R, H, 128] bf16: `wq_b(q_lora)` per query row (pre-RoPE), R = B * next_n (decode) or
               the chunk's tokens (prefill); H = 32 index heads (V4.1-Flash, assumed: the config's
               default is 64, V4's), replicated at every TP (the kernel sums heads locally)
  freqs        [max_pos, 64] fp32: RoPE table, real/imag interleaved (view_as_real(freqs_cis))
  positions    [R] int64: each row's token position
  head_weights_raw [R, H] bf16: `weights_proj(x)` before the scale softmax_scale * H^-0.5
  q_fp4, q_sf  [R, H, 64] int8, [R, H] int32: what `index_q_rope_pack_weights` makes of q_raw: per
               32-element block fake FP4 (ue8m0 scale, amax floor 6 * 2^-126), the result repacked
               with the scale ceil_ue8m0(max(amax / 6, 1e-4)), e2m1 codes rounded to nearest even;
               byte i holds element 2i in its low nibble, 2i + 1 in its high one; q_sf packs the four
               block exponents little-endian (block j in byte j)
  weights      [R, H] fp32: float(bf16(float(raw) * fp32(scale)))
  k_cache      [pages, 64, 1, 68] uint8: the index-K pool at 64 slots a page: a page's 64 x 64
               payload bytes (slot-major, packed as q), then its 64 x 4 ue8m0 exponents; K is packed
               with the same two stages (post-RoPE values; the K norm and rope are row 3's)
  seq_lens     [R] int32: compressed positions each row sees, (pos + 1) // ratio (decode clamps to 1:
               `c{1,2}_topk_lengths_clamp1`)
  page_table   [B, pages] int32: per request, its 256-token pages expanded to 64-slot index pages
               (`expand_index_page_table`: 4 / ratio consecutive index pages per full page), scattered
               over the pool; entries past a request's pages hold the padding page 0 (stale data)
  row_request  [R] int32: the request of each row (consecutive rows per request)

Output `logits` [R, W] fp32, W = pages * 64 (decode, `max_compressed_seq_len`) or max(seq_lens)
aligned to 64 (prefill, `flat_index_logits_tiles`' width): logits[r, j] = sum_h w[r, h] *
relu(q[r, h] . k[slot(request(r), j)]) for j < seq_lens[r], q and k the exact e2m1 x 2^e values. The
tail has -inf in the oracle (the torch prefill path's top-k reads whole rows and needs it); DeepGEMM and
`fp4_index_logits_paged` leave it unwritten (their consumers read lengths), and their paths here fill
it with -inf, so only the tail of the paths that write it is judged.

Input magnitudes: q_raw ~ N(0, 1) x 2^U{-2..1} per row; K ~ N(0, 1) x 2^U{-3..1} per token and
2^U{-2..0} per 32-block (the four block scales differ); raw head weights ~ N(0, 1) in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch

from harness.parity import op
from harness.parity.op import ORACLE, Case, Metric, Path, case_maker

OP = "indexer_logits_fp4"
# q and k are exact in the oracle (e2m1 x 2^e); DeepGEMM multiplies them exactly and accumulates in fp32;
# the torch and Triton paths round each head's dot product, each weighted score and the sum to bf16
DTYPE = "bf16"
PRIMARY = "logits"
OUTPUTS = {"logits": "float32"}  # fp32 on SM120 (index_logits_dtype: bf16 only on major 10)
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {
    # rounding scales with sum_h |w_h (q_h . k)|, not with the logit (heads of both signs cancel):
    # three bf16 roundings (each head's dot, each weighted score, the sum: at most 2^-8, bf16's unit
    # roundoff, of the magnitude each) bound the torch and Triton paths by 3 x 2^-8; measured on the
    # CPU 1.8e-3..2.5e-3 (the Triton kernels round where the torch form does: the same figures); 2^-6
    # leaves a margin, a wrong nibble or scale is O(1)
    "max_rel_err_magnitude": 2.0**-6,
    # a short row (one compressed position) can cancel to ~0 with nothing wrong
    "worst_row_calc_diff": math.inf,
    # every path's tail is -inf (the ones that leave it unwritten are filled by their path here)
    "tail_not_neginf": 0.0,
    # bf16 rounding swaps near-ties at the 512th place
    "topk_recall": 0.99,
    "worst_row_topk_recall": 0.95,
}
HEADS, DIM, PAGE, FULL_PAGE = 32, 128, 64, 256
PAYLOAD, SLOT_BYTES = DIM // 2, DIM // 2 + 4
PAGE_BYTES = PAGE * SLOT_BYTES
ROPE = 64  # qk_rope_head_dim: the last 64 of 128
TOPK = 512  # index_topk
SOFTMAX_SCALE = DIM**-0.5
WEIGHT_SCALE = SOFTMAX_SCALE * HEADS**-0.5  # DeepseekV41Indexer.head_weight_scale
FP4_AMAX_FLOOR = 6 * 2.0**-126  # fp4_fake_quant.FP4_AMAX_FLOOR
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
FLAT_BUDGET = 2 << 30  # scoring._DEEP_GEMM_SCORE_BUDGET_BYTES
ARCHS = op.SM100 + op.SM120  # DeepGEMM's FP8xFP4 MQA logits and the e2m1 pack need SM100+


# ---------------------------------------------------------------------------------------------- cases


# decode: B requests of next_n rows, context `ctx` tokens (mixed: spread up to it); prefill: `reqs` as
# (prefix, extend) tokens
_case = case_maker(mode="decode", next_n=1, ratio=1, lengths="mixed", extra_pages=0)


def cases() -> list[Case]:
    out = [
        _case("tiny_b2_n1_r1_mixed300", {"tiny"}, B=2, ctx=300),
        # MTP verify at next_n 3 on a ratio-2 layer: the rows' lengths step by 0 or 1
        _case("tiny_b2_n3_r2_mixed520", {"tiny"}, B=2, ctx=520, next_n=3, ratio=2),
        _case("tiny_b3_n2_r1_mixed200_widetable", {"tiny"}, B=3, ctx=200, next_n=2, extra_pages=2),
        # prefill, two requests: one with a cached prefix, one from position 0 (its first row sees
        # nothing at ratio 2: length 0)
        _case("tiny_prefill_r2", {"tiny"}, mode="prefill", ratio=2, reqs=((150, 5), (0, 4))),
    ]
    # V4.1-Flash decode: ratio-1 layers see every token (64K positions at 64K context); MTP next_n 1..4
    # (DeepGEMM's SM120 paged logits had a tile-count off-by-one at next_n = 3, DeepGEMM#324)
    for b, n, r, ctx, lengths in (
        (1, 1, 1, 65536, "equal"),
        (1, 1, 2, 65536, "equal"),
        (1, 3, 1, 4096, "equal"),
        (8, 1, 1, 16384, "mixed"),
        (8, 1, 2, 16384, "mixed"),
        (8, 2, 1, 16384, "mixed"),
        (8, 3, 1, 16384, "mixed"),
        (8, 3, 2, 8192, "mixed"),
        (8, 4, 1, 4096, "mixed"),
        (32, 1, 1, 16384, "mixed"),
        (32, 3, 2, 16384, "mixed"),
        (128, 1, 2, 8192, "mixed"),
    ):
        name = f"b{b}_n{n}_r{r}_{lengths}{ctx}"
        out.append(_case(name, {"flash"}, B=b, ctx=ctx, next_n=n, ratio=r, lengths=lengths))
    out.append(_case("b8_n1_r1_mixed4096_widetable", {"flash"}, B=8, ctx=4096, extra_pages=8))
    for name, r, reqs in (
        ("prefill_r1_t4096", 1, ((0, 4096),)),
        ("prefill_r2_t4096", 2, ((0, 4096),)),
        ("prefill_r1_prefix8192_t2048_t1024", 1, ((8192, 2048), (0, 1024))),
        ("prefill_r2_prefix16384_t2048", 2, ((16384, 2048),)),
    ):
        out.append(_case(name, {"flash"}, mode="prefill", ratio=r, reqs=reqs))
    return out


def request_tokens(case: Case) -> list[int]:
    """Each request's tokens (context, drafts included) at this step."""
    p = case.params
    if p["mode"] == "prefill":
        return [a + b for a, b in p["reqs"]]
    B, L = p["B"], p["ctx"]
    if p["lengths"] == "equal" or B == 1:
        return [L] * B
    # quadratic spread, most ending inside a page, interleaved; the longest reaches ctx
    out = [max(p["next_n"] + 1, round(L * ((b + 1) / B) ** 2) - (b * 37) % FULL_PAGE) for b in range(B)]
    out[-1] = L
    order = list(range(0, B, 2)) + list(range(1, B, 2))[::-1]
    return [out[i] for i in order]


def rows(case: Case) -> tuple[list[int], list[int]]:
    """(position, request) of each query row: decode, the last next_n tokens of each request; prefill,
    its extended tokens."""
    p = case.params
    pos, req = [], []
    for b, s in enumerate(request_tokens(case)):
        n = p["reqs"][b][1] if p["mode"] == "prefill" else p["next_n"]
        pos += list(range(s - n, s))
        req += [b] * n
    return pos, req


def lengths(case: Case) -> list[int]:
    """Compressed positions each row sees: (pos + 1) // ratio, at least 1 in decode."""
    pos, _ = rows(case)
    r, floor = case.params["ratio"], 1 if case.params["mode"] == "decode" else 0
    return [max(floor, (x + 1) // r) for x in pos]


# ---------------------------------------------------------------------------------------------- encoder


def _ceil_ue8m0(x: torch.Tensor) -> torch.Tensor:
    """The biased exponent of the power of two at or above fp32 x (`_ceil_ue8m0_exp` without its clamp)."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)


def _pow2(exp: torch.Tensor) -> torch.Tensor:
    return (exp.to(torch.int32) << 23).view(torch.float32)


def _e2m1_code_rne(x: torch.Tensor) -> torch.Tensor:
    """`_fp4_e2m1_code_rne`: the e2m1 nibble of fp32 x, saturating at 6, ties to even, no -0."""
    ax = x.abs().clamp(max=6.0)
    idx = torch.zeros_like(ax, dtype=torch.int32)
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        idx += (ax >= t).to(torch.int32)
    tie = torch.zeros_like(ax, dtype=torch.bool)
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        tie |= ax == t
    idx = torch.where(tie & (idx % 2 == 1), idx - 1, idx)
    return idx | (((x < 0) & (idx != 0)).to(torch.int32) << 3)


def pack_fp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, 128] (bf16 values, post-RoPE) -> (payload uint8 [n, 64], exponents uint8 [n, 4]): the two
    stages of SGLang's writers. Fake FP4: scale 2^ceil(log2(max(amax, floor) * (1/6))), values clamped to
    +-6 and rounded to nearest even on the e2m1 grid, back to bf16. Pack: exponent
    clamp(ceil_ue8m0(max(amax / 6, 1e-4)), 1, 254), e2m1 codes of value / scale (RNE)."""
    blocks = x.float().reshape(-1, 4, 32)
    amax = blocks.abs().amax(-1).clamp(min=FP4_AMAX_FLOOR) * torch.tensor(1.0 / 6.0, dtype=torch.float32)
    fake = _pow2(_ceil_ue8m0(amax))[..., None]
    scaled = (blocks / fake).clamp(-6.0, 6.0)
    mag = scaled.abs()
    step = torch.where(mag < 2.0, 0.5, torch.where(mag < 4.0, 1.0, 2.0))
    deq = (torch.round(mag / step) * step * torch.sign(scaled) * fake).bfloat16().float()
    exp = _ceil_ue8m0((deq.abs().amax(-1) / 6.0).clamp(min=1e-4)).clamp(1, 254)
    codes = _e2m1_code_rne(deq / _pow2(exp)[..., None]).reshape(-1, DIM)
    payload = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    return payload, exp.to(torch.uint8)


def pack_sf(exp: torch.Tensor) -> torch.Tensor:
    """Four exponent bytes [..., 4] -> the int32 word, block j in byte j (little-endian)."""
    return exp.contiguous().view(torch.int32).squeeze(-1)


def rope(q: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """q [R, H, 128] bf16 -> the RoPE'd bf16 rows as `index_rope_quant_pack` makes them: the last 64
    dims as (real, imag) pairs times freqs[pos], in fp32, rounded to bf16."""
    f = freqs[positions].float().view(-1, 1, ROPE // 2, 2)
    tail = q[..., -ROPE:].float().view(*q.shape[:-1], ROPE // 2, 2)
    re, im, fr, fi = tail[..., 0], tail[..., 1], f[..., 0], f[..., 1]
    rotated = torch.stack([re * fr - im * fi, re * fi + im * fr], -1).flatten(-2)
    return torch.cat([q[..., :-ROPE], rotated.bfloat16()], -1)


def head_weights(raw: torch.Tensor) -> torch.Tensor:
    """`head_weights(x).float()`: fp32 product with the scale, one bf16 rounding."""
    return (raw.float() * torch.tensor(WEIGHT_SCALE, dtype=torch.float32)).bfloat16().float()


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    ratio, tokens = p["ratio"], request_tokens(case)
    pos, req = rows(case)
    R = len(pos)
    per_full = FULL_PAGE // ratio // PAGE  # index pages per 256-token page
    full_pages = [math.ceil(s / FULL_PAGE) for s in tokens]
    num_full = 1 + sum(full_pages) + max(1, len(tokens) // 4)  # page 0 pads; a few belong to no request
    width = max(full_pages) + p["extra_pages"]
    perm = torch.randperm(num_full - 1, generator=gen) + 1
    table = torch.zeros(len(tokens), width * per_full, dtype=torch.int32)
    start = 0
    for b, n in enumerate(full_pages):
        full = perm[start : start + n]
        start += n
        table[b, : n * per_full] = (full[:, None] * per_full + torch.arange(per_full)).reshape(-1).to(torch.int32)
    slots = num_full * per_full * PAGE
    k = torch.randn(slots, 4, 32, generator=gen)
    k *= torch.pow(2.0, torch.randint(-3, 2, (slots, 1, 1), generator=gen).float())
    k *= torch.pow(2.0, torch.randint(-2, 1, (slots, 4, 1), generator=gen).float())
    payload, exp = pack_fp4(k.reshape(slots, DIM).bfloat16())
    pages = slots // PAGE
    cache = torch.cat([payload.reshape(pages, PAGE * PAYLOAD), exp.reshape(pages, PAGE * 4)], 1)
    positions = torch.tensor(pos, dtype=torch.int64)
    # RoPE table as DeepSeek's: theta 10000 over the 64 rope dims (the YaRN scaling does not change the layout)
    inv = 1.0 / (10000.0 ** (torch.arange(0, ROPE, 2, dtype=torch.float64) / ROPE))
    angles = torch.arange(max(pos) + 1, dtype=torch.float64)[:, None] * inv[None, :]
    freqs = torch.stack([angles.cos(), angles.sin()], -1).reshape(-1, ROPE).float()
    q_raw = torch.randn(R, HEADS, DIM, generator=gen)
    q_raw *= torch.pow(2.0, torch.randint(-2, 2, (R, 1, 1), generator=gen).float())
    q_raw = q_raw.bfloat16()
    q_payload, q_exp = pack_fp4(rope(q_raw, freqs, positions).reshape(-1, DIM))
    raw_w = torch.randn(R, HEADS, generator=gen).bfloat16()
    return {
        "q_raw": q_raw,
        "freqs": freqs,
        "positions": positions,
        "head_weights_raw": raw_w,
        "q_fp4": q_payload.view(torch.int8).reshape(R, HEADS, PAYLOAD),
        "q_sf": pack_sf(q_exp).reshape(R, HEADS),
        "weights": head_weights(raw_w),
        "k_cache": cache.view(pages, PAGE, 1, SLOT_BYTES),
        "seq_lens": torch.tensor(lengths(case), dtype=torch.int32),
        "page_table": table,
        "row_request": torch.tensor(req, dtype=torch.int32),
    }


def width(t: dict, case: Case) -> int:
    """The logits' columns: decode, the page table's capacity; prefill, the longest row aligned to 64."""
    if case.params["mode"] == "decode":
        return t["page_table"].shape[1] * PAGE
    return math.ceil(max(int(t["seq_lens"].max()), 0) / PAGE) * PAGE


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    pos = torch.arange(width(t, case))
    return {"logits": pos[None, :] < t["seq_lens"].long().cpu()[:, None]}


def cost(case: Case) -> tuple[float, float]:
    """Decode: each request's visible K (68 B a position) read once for its next_n rows; prefill: each
    request's K once per tile; q, weights, the logits written. 2 flops per (row, position, head, dim)."""
    lens = lengths(case)
    _, req = rows(case)
    per_request: dict[int, int] = {}
    for n, r in zip(lens, req):
        per_request[r] = max(per_request.get(r, 0), n)
    W = math.ceil(max(lens) / PAGE) * PAGE
    nbytes = sum(per_request.values()) * SLOT_BYTES + len(lens) * (HEADS * (PAYLOAD + 4 + 4) + 4 + W * 4)
    return float(nbytes), 2.0 * sum(lens) * HEADS * DIM


# ---------------------------------------------------------------------------------------------- oracle


def decode_fp4(payload: torch.Tensor, sf: torch.Tensor) -> torch.Tensor:
    """payload [..., 64] (int8 or uint8) and the int32 exponent words [...] -> float64 [..., 128]: byte i's
    low nibble is element 2i, its high nibble 2i + 1 (bit 3 the sign, bits 0-2 the e2m1 magnitude index),
    times 2^(byte j of the word - 127) for block j (elements 32j..32j+31)."""
    u = payload.contiguous().view(torch.uint8).long()
    codes = torch.stack([u & 0xF, u >> 4], -1).flatten(-2)
    table = E2M1.to(payload.device)
    values = table[codes & 7] * torch.where(codes >= 8, -1.0, 1.0).double()
    exps = sf.contiguous().view(torch.uint8).reshape(*sf.shape, 4).long()
    return values * torch.pow(2.0, (exps - 127).double()).repeat_interleave(32, -1)


def dequantize_cache(cache: torch.Tensor) -> torch.Tensor:
    """The exact K of every slot of the pool: [pages * 64, 128] float64."""
    flat = cache.reshape(cache.shape[0], PAGE_BYTES)
    payload = flat[:, : PAGE * PAYLOAD].reshape(-1, PAYLOAD)
    words = flat[:, PAGE * PAYLOAD :].contiguous().view(torch.int32).reshape(-1)
    return decode_fp4(payload, words)


def row_slots(t: dict, b: int, n: int) -> torch.Tensor:
    """The pool slots of request b's first n compressed positions."""
    pages = t["page_table"][b, : math.ceil(n / PAGE)].long()
    return (pages[:, None] * PAGE + torch.arange(PAGE, device=pages.device)).reshape(-1)[:n]


def logits_f64(t: dict, case: Case, decode: Callable = decode_fp4) -> dict[str, torch.Tensor]:
    """float64 from the definition, request by request (rows chunked to bound memory); -inf past each
    row's length. `decode` reads the e2m1 bytes (a planted copy swaps its nibbles)."""
    flat = t["k_cache"].reshape(t["k_cache"].shape[0], PAGE_BYTES)
    exact = decode(
        flat[:, : PAGE * PAYLOAD].reshape(-1, PAYLOAD),
        flat[:, PAGE * PAYLOAD :].contiguous().view(torch.int32).reshape(-1),
    )
    q = decode(t["q_fp4"], t["q_sf"])  # [R, H, 128]
    w = t["weights"].double()
    lens, req = t["seq_lens"].long(), t["row_request"].long()
    R, W = q.shape[0], width(t, case)
    out = torch.full((R, W), -math.inf, dtype=torch.float64, device=q.device)
    magnitude = torch.zeros_like(out)
    for b in req.unique().tolist():
        idx = (req == b).nonzero().squeeze(1)
        n = int(lens[idx].max())
        if n == 0:
            continue
        k = exact[row_slots(t, b, n)]  # [n, 128]
        step = max(1, (1 << 24) // (HEADS * n))
        for s in range(0, idx.numel(), step):
            rr = idx[s : s + step]
            heads = torch.einsum("rhd,nd->rhn", q[rr], k)
            score = torch.einsum("rhn,rh->rn", heads.relu(), w[rr])
            mag = torch.einsum("rhn,rh->rn", heads.abs(), w[rr].abs())
            keep = torch.arange(n, device=q.device)[None, :] < lens[rr][:, None]
            out[rr, :n] = torch.where(keep, score, -math.inf)
            magnitude[rr, :n] = torch.where(keep, mag, 0.0)
    return {"logits": out, "logits_magnitude": magnitude}


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return logits_f64(t, case)


# ---------------------------------------------------------------------------------------------- metrics


def metrics(outputs: dict, oracle: dict, inputs: dict, case: Case) -> list:
    """Each logit's error against its magnitude (what rounding scales with), the tail, and how many of
    the exact top-512 each row's logits still select."""
    logits, ref = outputs["logits"].double().cpu(), oracle["logits"].double().cpu()
    valid = valid_region(inputs, case)["logits"]
    err = ((logits - ref).abs() / oracle["logits_magnitude"].double().cpu()).nan_to_num(nan=math.inf)
    err = torch.where(valid & (logits != ref), err, 0.0)  # an exact match is no error, 0/0 included
    at = divmod(int(err.argmax()), err.shape[1])
    tail = logits[~valid]
    fills = {
        "neg_inf": int((tail == -math.inf).sum()),
        "nan": int(tail.isnan().sum()),
        "other": int((tail.isfinite() | (tail == math.inf)).sum()),
    }
    recall, worst, worst_row = topk_recall(logits, ref, inputs["seq_lens"].cpu())
    return [
        Metric("max_rel_err_magnitude", float(err.max()), detail={"index": list(at)}),
        Metric("tail_not_neginf", float(tail.numel() - fills["neg_inf"]), unit="count", detail=fills),
        Metric("topk_recall", recall, better="higher", detail={"k": TOPK}),
        Metric("worst_row_topk_recall", worst, better="higher", detail={"k": TOPK, "row": worst_row}),
    ]


def topk_recall(logits: torch.Tensor, ref: torch.Tensor, seq_lens: torch.Tensor) -> tuple[float, float, int]:
    """Tie-aware recall of the top-512 of `logits` against the exact top-512 of `ref` over each row's
    valid positions: a chosen position counts when its exact logit reaches the exact k-th. (pooled,
    worst row's, that row)."""
    hits, total, worst, worst_row = 0, 0, 1.0, 0
    for b, n in enumerate(seq_lens.tolist()):
        k = min(TOPK, n)
        if k == 0:
            continue
        exact = ref[b, :n]
        kth = exact.topk(k).values[-1]
        chosen = logits[b, :n].nan_to_num(nan=-math.inf).topk(k).indices
        h = int((exact[chosen] >= kth).sum())
        hits, total = hits + h, total + k
        if h / k < worst:
            worst, worst_row = h / k, b
    return (hits / total if total else 1.0), worst, worst_row


# ---------------------------------------------------------------------------------------------- paths


def _neginf_tail(logits: torch.Tensor, t: dict, case: Case) -> torch.Tensor:
    """A kernel that leaves the tail unwritten (its consumer reads the lengths): the tail filled with -inf,
    what the oracle holds there, so that a launch's stale memory is not taken for a race."""
    valid = valid_region(t, case)["logits"].to(logits.device)
    return logits.float().masked_fill(~valid, -math.inf).contiguous()


def _stand_in_pool(t: dict) -> SimpleNamespace:
    """What DeepSeekV4IndexerPool's readers use of the pool: one layer's [pages, 64 * 68] buffer."""
    buf = t["k_cache"].reshape(t["k_cache"].shape[0], PAGE_BYTES)
    return SimpleNamespace(use_fp4_indexer=True, index_k_with_scale_buffer=[buf], start_layer=0, page_size=PAGE)


def _pool_class():
    return op.function("sglang.srt.mem_cache.deepseek_v4_memory_pool:DeepSeekV4IndexerPool")


def _fq4_queries(t: dict) -> torch.Tensor:
    """`DeepseekV41Indexer.queries` after wq_b: `_rope_fq4` over the per-row frequencies (torch on the CPU,
    SGLang's fused Triton kernel on CUDA), [R, H, 128] bf16."""
    fq4 = op.function("sglang.srt.layers.attention.dsv4.dsv41_sparse:_rope_fq4")
    freqs = torch.view_as_complex(t["freqs"].view(-1, ROPE // 2, 2).contiguous())
    return fq4(t["q_raw"], freqs[t["positions"]], ROPE)


def _bf16_weights(t: dict) -> torch.Tensor:
    """`DeepseekV41Indexer.head_weights`: the raw bf16 weights times the Python scale (a bf16 tensor)."""
    return t["head_weights_raw"] * WEIGHT_SCALE


def _request_slots(t: dict, case: Case) -> torch.Tensor:
    """[R, W] int64 slot of each row's positions, 0 past its length (`decode_scores`' masked_fill)."""
    W = width(t, case)
    table = t["page_table"].long()[t["row_request"].long()]  # [R, pages]
    j = torch.arange(W, device=table.device)
    cols = (j // PAGE).clamp(max=table.shape[1] - 1)
    slots = table[:, cols] * PAGE + j % PAGE
    return slots.masked_fill(j[None, :] >= t["seq_lens"].long()[:, None], 0)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The torch indexer's prefill scores: per request `get_index_k_dequant` (bf16 K of its positions)
    and `_score_chunks` (DeepseekV41Indexer.scores: bf16 einsum, relu, weights, sum; -inf past each
    row's length)."""
    scoring = op.import_module("sglang.srt.layers.attention.dsv4.v41_indexer.scoring")
    scores = op.function("sglang.srt.layers.attention.dsv4.dsv41_sparse:DeepseekV41Indexer.scores")
    pool = _stand_in_pool(t)
    q, w = _fq4_queries(t), _bf16_weights(t)
    lens, req = t["seq_lens"].long(), t["row_request"].long()
    out = torch.full((q.shape[0], width(t, case)), -math.inf, dtype=torch.float32, device=q.device)
    indexer = SimpleNamespace(scores=lambda q, k, w: scores(None, q, k, w))
    for b in req.unique().tolist():
        tok = (req == b).nonzero().squeeze(1)
        lc = int(lens[tok].max())
        if lc == 0:
            continue
        slots = row_slots(t, b, lc)
        index_k = _pool_class().get_index_k_dequant(pool, 0, slots)
        request = scoring.RequestScores(
            lc=lc, k=min(TOPK, lc), columns=torch.arange(lc, device=q.device), tok=tok, lens=lens[tok], slots=slots
        )
        for chunk in scoring._score_chunks(indexer=indexer, q=q, weights=w, index_k=index_k, request=request):
            out[chunk.tok, :lc] = chunk.scores
    return {"logits": out}


def _fp4_indexer():
    return op.import_module("sglang.kernels.ops.attention.dsv4.fp4_indexer")


def sglang_triton_decode(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`fp4_index_logits_decode` (the torch indexer's decode off SM90) on the fake-quantized queries:
    its output is SGLang's own allocation, guarded, written whole (-inf past each length)."""
    mod = _fp4_indexer()
    q, w = _fq4_queries(t), _bf16_weights(t)
    table = t["k_cache"].reshape(t["k_cache"].shape[0], PAGE_BYTES)
    with op.guarded_allocations(mod) as allocs, op.as_on_a_gpu():
        logits = mod.fp4_index_logits_decode(q, w, _request_slots(t, case), t["seq_lens"].long(), table, PAGE)
    return {"logits": logits.contiguous(), **allocs.result()}


def req_to_token(t: dict, case: Case) -> torch.Tensor:
    """[B, W * ratio] token slots consistent with the index page table: token p * ratio + i of request b
    at (index slot of p) * ratio + i, so that req_to_token[b, p * ratio] // ratio is p's index slot."""
    r, W = case.params["ratio"], width(t, case)
    table = t["page_table"].long()
    p = torch.arange(W, device=table.device)
    slot = table[:, (p // PAGE).clamp(max=table.shape[1] - 1)] * PAGE + p % PAGE  # [B, W]
    tokens = slot[:, :, None] * r + torch.arange(r, device=table.device)
    return tokens.reshape(table.shape[0], -1).to(torch.int32)  # SGLang's req_to_token is int32


def sglang_triton_paged(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`fp4_index_logits_paged` (the torch indexer's decode on SM90): slots from req_to_token, workers
    from the SM count; under the interpreter the count is the RTX PRO 6000's 188 (a GPU's), since the
    interpreter has no device to ask. The tail is left unwritten (filled here)."""
    mod = _fp4_indexer()
    q, w = _fq4_queries(t), _bf16_weights(t)
    table = t["k_cache"].reshape(t["k_cache"].shape[0], PAGE_BYTES)
    args = (
        q,
        w,
        t["row_request"],
        req_to_token(t, case),
        t["seq_lens"],
        table,
        PAGE,
        width(t, case),
        case.params["ratio"],
    )
    if not op.interpreted():
        return {"logits": _neginf_tail(mod.fp4_index_logits_paged(*args), t, case)}
    real = torch.cuda.get_device_properties
    torch.cuda.get_device_properties = lambda device=None: SimpleNamespace(multi_processor_count=188)
    try:
        with op.as_on_a_gpu():
            logits = mod.fp4_index_logits_paged(*args)
    finally:
        torch.cuda.get_device_properties = real
    return {"logits": _neginf_tail(logits, t, case)}


def _deep_gemm():
    return op.deepgemm.load()  # Unavailable (with the reason) where DeepGEMM cannot run


def _paged_call(t: dict, case: Case, q_fp4: torch.Tensor, q_sf: torch.Tensor, weights: torch.Tensor):
    """`_deep_gemm_decode`'s logits: DeepGEMMDecodeData.paged_logits_args over every row (rows_per_request
    next_n; the page table is per row in the metadata, as `expand_index_page_table` leaves it) and
    deep_gemm_fp4_paged_mqa_logits, with DeepGEMM's schedule made once (not timed)."""
    if case.params["mode"] != "decode":
        raise op.Unavailable("the paged logits serve decode and MTP verify; prefill takes fp8_fp4_mqa_logits")
    dg = _deep_gemm()
    scoring = op.import_module("sglang.srt.layers.attention.dsv4.v41_indexer.scoring")
    logits_fn = op.function("sglang.kernels.ops.attention.dsv4.index_logits:deep_gemm_fp4_paged_mqa_logits")
    n, R = case.params["next_n"], q_fp4.shape[0]
    meta = SimpleNamespace(
        rows_per_request=n,
        compressed_seq_lens=t["seq_lens"],
        page_table=t["page_table"][t["row_request"].long()],
    )
    data = scoring.DeepGEMMDecodeData(q_fp4.view(R, 1, HEADS, PAYLOAD), q_sf.view(R, 1, HEADS), weights, t["k_cache"])
    q, lens, table = data.paged_logits_args(meta)
    schedule = dg.get_paged_mqa_logits_metadata(lens.to(torch.int32).view(-1, n), PAGE, dg.get_num_sms())
    W = width(t, case)
    return lambda: logits_fn(q, data.k_cache, data.weights, lens, table, schedule, W)


def _flat_call(t: dict, case: Case, q_fp4: torch.Tensor, q_sf: torch.Tensor, weights: torch.Tensor):
    """`_deep_gemm_prefill`'s logits: each request's K gathered by the pool's reader
    (`get_index_k_fp4`) into the flattened K, then `score_tiles` -> flat_index_logits_tiles (DeepGEMM
    fp8_fp4_mqa_logits per row tile), the tiles stacked."""
    if case.params["mode"] != "prefill":
        raise op.Unavailable("the flattened-K logits serve prefill; decode takes fp8_fp4_paged_mqa_logits")
    _deep_gemm()
    scoring = op.import_module("sglang.srt.layers.attention.dsv4.v41_indexer.scoring")
    lens, req = t["seq_lens"], t["row_request"].long()
    per_request = [int(lens[req == b].max()) for b in req.unique().tolist()]
    k_slots = torch.cat([row_slots(t, b, n) for b, n in enumerate(per_request)])
    starts = torch.tensor([0] + per_request[:-1], device=lens.device).cumsum(0).to(torch.int32)
    kv = _pool_class().get_index_k_fp4(_stand_in_pool(t), 0, k_slots)
    data = scoring.DeepGEMMPrefillData(
        k_slots=k_slots,
        request_starts=starts[req].contiguous(),
        lens_per_request=per_request,
        rows_per_request=[int((req == b).sum()) for b in range(len(per_request))],
        compress_lens=lens.to(torch.int32),
        q_fp4=q_fp4,
        q_sf=q_sf,
        weights=weights,
    )

    def call() -> torch.Tensor:
        return torch.cat([tile for _, tile in scoring.score_tiles(data, kv)])

    return call


def _packed(t: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return t["q_fp4"], t["q_sf"], t["weights"]


def _jit_packed(t: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_index_q_and_weights` after wq_b: the JIT `index_q_rope_pack_weights` on the raw queries."""
    pack = op.function("sglang.kernels.ops.attention.dsv4.fp4_indexer_rope:index_q_rope_pack_weights")
    q_fp4, q_sf, w = pack(t["q_raw"], t["freqs"], t["positions"], t["head_weights_raw"], WEIGHT_SCALE)
    R = t["q_raw"].shape[0]
    return q_fp4.view(R, HEADS, PAYLOAD), q_sf.view(R, HEADS), w


def _dg_call(t: dict, case: Case, packed: Callable) -> Callable[[], torch.Tensor]:
    call = _paged_call if case.params["mode"] == "decode" else _flat_call
    return call(t, case, *packed(t))


def deepgemm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"logits": _neginf_tail(_dg_call(t, case, _packed)(), t, case)}


def sglang_jit_q_deepgemm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"logits": _neginf_tail(_dg_call(t, case, _jit_packed)(), t, case)}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 over the exact e2m1 x ue8m0 decoding; -inf past seq_len"),
    Path(
        "sglang.deepgemm",
        deepgemm,
        archs=ARCHS,
        timed=lambda t, case: _dg_call(t, case, _packed),
        note="the SM120 default: decode DeepGEMMDecodeData.paged_logits_args + deep_gemm_fp4_paged_mqa_logits "
        "(fp8_fp4_paged_mqa_logits), prefill score_tiles -> flat_index_logits_tiles (fp8_fp4_mqa_logits); "
        "operands packed by the inputs' encoder; tail filled with -inf",
    ),
    Path(
        "sglang.jit_q.deepgemm",
        sglang_jit_q_deepgemm,
        archs=ARCHS,
        timed=lambda t, case: _dg_call(t, case, _jit_packed),
        note="index_q_rope_pack_weights (JIT RoPE + two-stage FP4 pack + head weights) from the raw queries, "
        "then the same DeepGEMM call",
    ),
    Path(
        "sglang.torch",
        sglang_torch,
        note="_rope_fq4 + get_index_k_dequant + _score_chunks (DeepseekV41Indexer.scores): the torch prefill indexer",
    ),
    Path(
        "sglang.triton_decode",
        sglang_triton_decode,
        note="_rope_fq4 + fp4_index_logits_decode (the torch indexer's decode off SM90); output guarded",
    ),
    Path(
        "sglang.triton_paged",
        sglang_triton_paged,
        note="_rope_fq4 + fp4_index_logits_paged (the torch indexer's decode on SM90); tail filled with -inf",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsv4.index_logits:deep_gemm_fp4_paged_mqa_logits": (
        "rows <= 512 (no 4096-row SM120 chunking), schedule from DeepGEMM's metadata only"
    ),
    "sglang.kernels.ops.attention.dsv4.index_logits:flat_index_logits_tiles": (
        "one tile per call (rows x width under the 2 GiB budget); bf16 logits (SM100) not run"
    ),
    "sglang.kernels.ops.attention.dsv4.fp4_indexer_rope:index_q_rope_pack_weights": (
        "judged through the logits it feeds, not byte by byte"
    ),
}

# figures no limit judges, and why (the run page lists them)
UNJUDGED = {
    "worst_row_calc_diff": "a short row (one compressed position) can cancel to ~0 between heads of both signs and "
    "drift by 1e-1 in calc_diff with nothing wrong: max_rel_err_magnitude bounds every row's logits instead",
}

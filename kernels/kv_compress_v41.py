"""DeepSeek-V4.1 ratio-1 / ratio-2 compressor ("low-ratio compress") and its two cache writes: the main compressed
KV (V4 layout, 584 B per token, fp4 fake-quantized first) and the FP4 index K (68 B per slot). Checked through the
caches' readers: what a path writes is decoded by SGLang's own readers before it is compared with the oracle.

Call site: `srt/layers/attention/deepseek_v4_backend.py DeepseekV4AttnBackend._forward_low_ratio_sources` ->
`_low_ratio_compress` (extend) / `_low_ratio_compress_decode` (decode) -> `_low_ratio_compress_fused(layer, x, req, pos,
extend_offsets=...)`, which calls, with `freqs_cis = view_as_real(layer.freqs_cis).flatten(-2)`:
  ratio 1: `kernels/ops/attention/dsv4/low_ratio_compress.py:c1_decode_norm_rope_store(wkv(x), norm.weight, pos,
           raw_out_loc, eps, freqs_cis, kv_cache, page_size=256, layout=V4)` (JIT `c1.cuh`, decode and extend);
  ratio 2: `c2_decode_norm_rope_store(kv_score, state.kv_score, norm.weight, pos, req, raw_out_loc, ...,
           page_size=128, ring_size=2)` (decode) or `c2_prefill_norm_rope_store(..., extend_start_loc,
           extend_seq_lens, ...)` (extend; then the ring write-back), JIT `c2.cuh`;
  then `fp4_indexer_rope.py:index_k_norm_rope_pack_store(indexer.forward_wk(latent), k_norm.weight, eps, freqs_cis,
           pos, c{r}_out_loc, index_k_cache, ratio=r)` (JIT `fp4_indexer_rope.cuh`).
SM120 selects it: `dsv41_sparse.fused_low_ratio_compress_supported()` is `capability major >= 10` (the docstring says
the kernels need sm100+ for `cvt.rn.satfinite.e2m1x2`; SM120 has that instruction too). The layout is V4:
`select_dsv4_kv_layout()` returns (V4, None) unless the GPU is major 10 (SM100) and `resolve_compressed_kv_layout(V4,
r)` is V4, so the ratio-1/2 pools are 584 B per token (pages 256 / r tokens); the index-K pool is the fp4 one,
DSV41_INDEX_PAGE_SIZE = 64 slots (DEEPGEMM_PAGED_SPARSE_MQA_LOGITS is False off SM100) of 64 code bytes + 4 UE8M0 bytes.
SGLang's unfused path `_low_ratio_compress_torch` (verify, CP, and every GPU without the fused kernels) is the same
math in pieces: `_low_ratio_pair_partners` + `DeepseekV41Compressor.pool_pairs`, `finish` (RMSNorm: Triton
`rmsnorm_fp32` on CUDA, torch otherwise), `indexer.index_keys` (k_norm, then `_rope_fq4`: Triton
`rope_tail_fake_quant_fp4` on CUDA, `rope_tail` + `fake_quant_fp4` otherwise), `pool.set_index_k_fp4` (Triton
`store_fp4_index_k_cache`), `_rope_fq4(compressed_kv=True)` and the pool's V4 store (`fused_store_cache`, JIT).

Inputs, in the production layout (one kv_source layer; requests prefilled from position 0, ragged rows in order):
  kv_in      ratio 1: [T, 512] bf16, the `wkv` output; ratio 2: [T, 1024] fp32 `| kv | score |`, the `wkv_gate`
             output (`linear_bf16_fp32`). kv N(0,1) times per-token 2^-3..2^3, scores N(0, 2^2)
  norm_weight [512] bf16 (the c1/c2 kernels take bf16 only); wk [128, 512] bf16; k_norm_weight [128] bf16; eps 1e-6
  freqs_cis  [max_pos, 32] complex64
  page_table [B, pages] int64: each request's 256-token pages, scattered, page 0 (the padding page) unused; the FULL
             slot of (request, pos) is page * 256 + pos % 256, the compressed slot (main and index) that // r
  kvcache    [pages, 149760 (r=1) | 74880 (r=2)] uint8 random bytes; index_cache [pages * 4 / r, 64 * 68] uint8
The definition (c1.cuh, c2.cuh, fp4_indexer_rope.cuh; the torch forms in dsv41_sparse.py), per group (r = 1: each
token; r = 2: positions (2k, 2k+1) of a request, produced by the odd token, at RoPE position 2k = its first):
  pooled = kv (r = 1) or, per dim, softmax(score_2k, score_2k+1) . (kv_2k, kv_2k+1) (r = 2), rounded to bf16
  latent = bf16(RMSNorm(pooled) * w); main y = latent with the last 64 dims rotated (pairs) by freqs[group pos],
    rounded to bf16; then per 16 dims s = e4m3(clamp(amax / 6, 2^-9, 448)), fq = rn_e2m1(y / s) * s; stored V4: nope
    per 64-group e = ceil(log2(max(amax, 1e-4) / 448)), fp8 = rn(fq / 2^e), rope bf16 (exact)
  index: k = bf16(wk . latent), kn = bf16(RMSNorm(k) * w_k), rotated tail (bf16), then per 32 dims
    S = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)), fq = rn_e2m1(kn / S) * S, then packed again per 32 dims with
    2^ceil(log2(max(amax(fq) / 6, 1e-4))) (round to nearest even): the read-back is fq but for blocks under ~6e-4
Outputs `kv` [N, 512] and `index_k` [N, 128]: the written slots read back by SGLang's readers (`flash_mla_sm120.
_gather_and_dequant`, as kernels/k_norm_rope_flashmla.py; `DeepSeekV4IndexerPool.get_index_k_dequant`), groups in
request then position order. The oracle's outputs are the exact float64 y and k (no rounding anywhere): the drift
is the fp4 quantization. The sharp checks (metrics below) recompute the stated chain's pre-quantization values
(bf16 rounding points included) and judge each element against that chain's own quantization grid.
V4.1-Flash: ratio 1 for 20 layers, ratio 2 for 18 (srt/configs: compress_ratios), head dim 512 (448 + 64 rope),
indexer 128 wide with 64 rope dims; one KV head, so TP does not change the shapes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from types import MethodType, SimpleNamespace
from unittest import mock

import torch
import triton
import triton.language as tl

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    as_on_a_gpu,
    case_maker,
    dsv4,
    import_module,
    interpreted,
    sibling,
)

OP = "kv_compress_v41"
# fp4 (e2m1) values with fine scales: calc_diff against the exact values is the fp4 rounding, ~3e-3
DTYPE = "fp4"
PRIMARY = "kv"
OUTPUTS = {}  # every path returns the harness's read-back of the caches it wrote
TOLERANCE = (1e-1, 2.5e-1)
D, ROPE, NOPE, IDX = 512, 64, 448, 128
EPS = 1e-6
SWA_PAGE = 256  # the FULL pool's page; the ratio-r pools page it by 256 // r
INDEX_PAGE = 64  # DSV41_INDEX_PAGE_SIZE off SM100
INDEX_SLOT = IDX // 2 + IDX // 32  # 68 B
FP8_FLOOR = 1e-4  # fmaxf(1e-4f, abs_max) in the V4 store
FP4_AMAX_FLOOR = 6 * 2.0**-126  # fake_quant_fp4's floor (the first index stage)
PACK_FLOOR = 1e-4  # the packer's floor on amax / 6 (the second index stage)
CEILINGS = {
    # |got - v| within half a step of each quantizer of the stated chain: <= 1 of the bound; a bf16 rounding point
    # of the chain where fp32 and float64 arithmetic disagree moves v by one bf16 ulp (<= 2^-5 of the bound)
    "kv_err_vs_bound": 1.0 + 2.0**-4,
    "index_err_vs_bound": 1.0 + 2.0**-4,
    # elements not equal to the stated encoding of the chain's value: only those flips (about 1e-5 of them)
    "kv_code_mismatch": 1e-3,
    "index_code_mismatch": 1e-3,
}
UNJUDGED = {
    "index_k.max_abs": "the index K is judged against its quantizer's half step by index_err_vs_bound and "
    "against the stated encoding by index_code_mismatch; its largest difference in value is shown beside them",
}
_case = case_maker(decode=0, chunks=1, pad=0, max_pos=4096)


def cases() -> list[Case]:
    out = [
        # ratio 1: one prefill of two requests, then a decode step with a padded graph row
        _case("tiny_c1_prefill_decode", {"tiny"}, ratio=1, lens=(5, 4), decode=1, pad=1),
        # ratio 2: prefill in two chunks (the first ends on an even position: its partner waits in the ring), then
        # decode steps that complete pairs from the ring and park new halves; odd and even lengths
        _case("tiny_c2_chunked_decode", {"tiny"}, ratio=2, lens=(8, 7), decode=2, chunks=2, pad=1),
    ]
    for ratio in (1, 2):
        for t in (1024, 8192):
            out.append(_case(f"c{ratio}_t{t}_prefill", {"flash"}, ratio=ratio, lens=(t,), max_pos=65536))
        for b in (1, 8, 64):
            lens = tuple(1000 + 61 * i for i in range(b))
            out.append(_case(f"c{ratio}_b{b}_decode", {"flash"}, ratio=ratio, lens=lens, decode=2, pad=1,
                             max_pos=65536))  # fmt: skip
        out.append(_case(f"c{ratio}_t4096_chunked", {"flash"}, ratio=ratio, lens=(4096, 777), chunks=2, decode=1,
                         max_pos=65536))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- schedule


def groups(case: Case) -> list[tuple[int, int]]:
    """(request, group's first position) of every compressed token, in output order."""
    r = case.params["ratio"]
    return [(b, p) for b, n in enumerate(case.params["lens"]) for p in range(0, n - r + 1, r)]


def steps(case: Case) -> list[tuple[str, list[tuple[int, int, int]]]]:
    """The forward steps: ("extend" | "decode", [(request, first position, rows)]). Prefill len - decode tokens in
    `chunks` chunks (the first an odd number of tokens, so that a pair straddles the chunks), then one token per
    request per decode step."""
    p = case.params
    pre = [n - p["decode"] for n in p["lens"]]
    out = []
    if p["chunks"] == 1:
        out.append(("extend", [(b, 0, n) for b, n in enumerate(pre)]))
    else:
        first = [(n // 2) | 1 for n in pre]
        out.append(("extend", [(b, 0, f) for b, f in enumerate(first)]))
        out.append(("extend", [(b, f, n - f) for b, (f, n) in enumerate(zip(first, pre))]))
    for s in range(p["decode"]):
        out.append(("decode", [(b, n + s, 1) for b, n in enumerate(pre)]))
    return out


def _pages(case: Case) -> int:
    return 1 + sum(math.ceil(n / SWA_PAGE) for n in case.params["lens"])


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """kv with per-token magnitudes 2^-3..2^3; norm weights exp(N(0, 0.3)) times a per-64-group power of two 2^-2..2^2
    (the fp8 groups' scales differ; within a group the fp4 blocks stay within the fp8 range)."""
    p = case.params
    r, lens = p["ratio"], p["lens"]
    T = sum(lens)
    kv = torch.randn(T, D, generator=gen) * torch.pow(2.0, torch.randint(-3, 4, (T, 1), generator=gen).float())
    if r == 1:
        kv_in = kv.bfloat16()
    else:
        kv_in = torch.cat([kv, 2.0 * torch.randn(T, D, generator=gen)], 1)
    group = torch.pow(2.0, torch.randint(-2, 3, (D // 64,), generator=gen).float()).repeat_interleave(64)
    weight = (torch.exp(torch.randn(D, generator=gen) * 0.3) * group).bfloat16()
    wk = (torch.randn(IDX, D, generator=gen) / math.sqrt(D)).bfloat16()
    k_weight = torch.exp(torch.randn(IDX, generator=gen) * 0.3).bfloat16()
    pages = _pages(case)
    width = max(math.ceil(n / SWA_PAGE) for n in lens)
    perm = torch.randperm(pages - 1, generator=gen) + 1
    table = torch.zeros(len(lens), width, dtype=torch.int64)
    at = 0
    for b, n in enumerate(lens):
        k = math.ceil(n / SWA_PAGE)
        table[b, :k] = perm[at : at + k]
        at += k
    kr = sibling(__file__, "k_norm_rope_flashmla")
    return {
        "kv_in": kv_in.contiguous(),
        "norm_weight": weight,
        "wk": wk,
        "k_norm_weight": k_weight,
        "freqs_cis": kr.freqs_table(p["max_pos"]),
        "page_table": table,
        "kvcache": torch.randint(0, 256, (pages, dsv4.page_bytes(SWA_PAGE // r)), generator=gen, dtype=torch.uint8),
        "index_cache": torch.randint(
            0, 256, (pages * SWA_PAGE // r // INDEX_PAGE, INDEX_PAGE * INDEX_SLOT), generator=gen, dtype=torch.uint8
        ),  # fmt: skip
    }


def full_slot(t: dict, b: int, pos: torch.Tensor) -> torch.Tensor:
    return t["page_table"][b].to(pos.device)[pos // SWA_PAGE] * SWA_PAGE + pos % SWA_PAGE


def out_slots(t: dict, case: Case) -> torch.Tensor:
    """[N] compressed slot (main and index) of each group: the FULL slot of its last token // r."""
    r = case.params["ratio"]
    dev = t["kvcache"].device
    return torch.stack([full_slot(t, b, torch.tensor(p + r - 1, device=dev)) // r for b, p in groups(case)])


def cost(case: Case) -> tuple[float, float]:
    """Inputs read once, each group written (584 + 68 B); ~10 flops per value of pooling, norm and quantization, the
    wk projection 2 * 512 * 128 per group."""
    T, n, r = sum(case.params["lens"]), len(groups(case)), case.params["ratio"]
    row_in = D * 2 if r == 1 else 2 * D * 4
    return float(T * row_in + n * (dsv4.TOKEN_BYTES + INDEX_SLOT + 16)), float(T * D * 10 + n * 2 * D * IDX)


# ---------------------------------------------------------------------------------------------- oracle


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS) * w.double()


def _rope(y: torch.Tensor, freqs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The last 64 dims rotated as 32 (re, im) pairs by freqs[pos], float64."""
    rot = torch.view_as_complex(y[:, -ROPE:].reshape(-1, ROPE // 2, 2).contiguous())
    rot = torch.view_as_real(rot * freqs[pos.long()].to(torch.complex128)).reshape(-1, ROPE)
    return torch.cat([y[:, :-ROPE], rot], 1)


def pooled(t: dict, case: Case) -> torch.Tensor:
    """[N, 512] float64 pooled kv of each group."""
    r = case.params["ratio"]
    x = t["kv_in"].double()
    starts = [sum(case.params["lens"][:b]) for b in range(len(case.params["lens"]))]
    rows = torch.tensor([starts[b] + p for b, p in groups(case)], device=x.device, dtype=torch.long)
    if r == 1:
        return x[rows]
    kv = torch.stack([x[rows, :D], x[rows + 1, :D]], 1)
    score = torch.stack([x[rows, D:], x[rows + 1, D:]], 1)
    return (torch.softmax(score, 1) * kv).sum(1)


def chain(t: dict, case: Case, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(main y [N, 512], index k [N, 128]) before quantization, float64: exact (bf16=False, the oracle) or with the
    stated bf16 rounding points (bf16=True, what the metrics judge the quantizers against)."""
    rnd: Callable[[torch.Tensor], torch.Tensor] = (lambda v: v.to(torch.bfloat16).double()) if bf16 else (lambda v: v)
    pos = torch.tensor([p for _, p in groups(case)], device=t["kv_in"].device)
    latent = rnd(_rms(rnd(pooled(t, case)), t["norm_weight"]))
    y = _rope(latent, t["freqs_cis"], pos)
    k = rnd(_rms(rnd(latent @ t["wk"].double().T), t["k_norm_weight"]))
    k = _rope(k, t["freqs_cis"], pos)
    if bf16:  # rope_tail rounds the rotated tail; the head is already bf16
        y, k = rnd(y), rnd(k)
    return y, k


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    y, k = chain(t, case, bf16=False)
    return {"kv": y, "index_k": k}


# ---------------------------------------------------------------------------------------------- encodings


def e2m1_step(m: torch.Tensor) -> torch.Tensor:
    """The e2m1 grid step at |m| (m already divided by its scale): 0.5 below 2, 1 below 4, else 2."""
    a = m.abs()
    return torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0)).double()


def round_e2m1(m: torch.Tensor) -> torch.Tensor:
    """Round to nearest even onto {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at 6 (float64)."""
    a = m.abs().clamp(max=6.0)
    step = e2m1_step(a)
    return torch.round(a / step) * step * torch.sign(m)


def kv_scales(v: torch.Tensor) -> torch.Tensor:
    """[N, 512] the per-16 e4m3 scale of each element (compressed_kv_scale), float64."""
    amax = v.reshape(v.shape[0], -1, 16).abs().amax(-1).float()
    s = (amax * (1.0 / 6.0)).clamp(2.0**-9, 448.0).to(torch.float8_e4m3fn).double()
    return s.repeat_interleave(16, 1)


def kv_fake_quant(v: torch.Tensor) -> torch.Tensor:
    s = kv_scales(v)
    return round_e2m1((v / s).clamp(-6, 6)) * s


def kv_encoding(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The V4 store of the fake-quantized rows: (nope fp8 [N, 448], UE8M0 bytes [N, 7], rope bf16 [N, 64])."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    return kr.encode(kv_fake_quant(v))


def kv_decoded(v: torch.Tensor) -> torch.Tensor:
    """What the V4 reader gives for the stated encoding of rows v, float64."""
    nope8, e, rope = kv_encoding(v)
    scale = dsv4.pow2(e.long() - 127).repeat_interleave(dsv4.SCALE_GROUP, 1)
    return torch.cat([nope8.double() * scale, rope.double()], 1)


def index_scales(k: torch.Tensor) -> torch.Tensor:
    """[N, 128] the first stage's per-32 power-of-two scale: ceil_pow2(max(amax, 6 * 2^-126) * (1 / 6))."""
    amax = k.reshape(k.shape[0], -1, 32).abs().amax(-1).float().clamp(min=FP4_AMAX_FLOOR) * (1.0 / 6.0)
    return torch.pow(2.0, torch.ceil(torch.log2(amax.double()))).repeat_interleave(32, 1)


def index_decoded(k: torch.Tensor, scale_of: Callable[[torch.Tensor], torch.Tensor] = index_scales) -> torch.Tensor:
    """What the index-K reader gives for the stated two-stage encoding of rows k, float64."""
    s = scale_of(k)
    fq = round_e2m1((k / s).clamp(-6, 6)) * s
    amax = fq.reshape(fq.shape[0], -1, 32).abs().amax(-1)
    s2 = torch.pow(2.0, torch.ceil(torch.log2((amax / 6).clamp(min=PACK_FLOOR)))).repeat_interleave(32, 1)
    return round_e2m1((fq / s2).clamp(-6, 6)) * s2


def write_index(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`cache` (a copy) with rows of e2m1 grid values times their block's power of two written in the 68 B layout
    (written here, not by SGLang's writer): codes at page * 4352 + off * 64 (element 2i low nibble), the four
    biased exponents at page * 4352 + 64 * 64 + off * 4."""
    out = cache.clone()
    v = values.double().cpu()
    amax = v.reshape(v.shape[0], -1, 32).abs().amax(-1)
    e = torch.ceil(torch.log2((amax / 6).clamp(min=PACK_FLOOR)))
    m = v / torch.pow(2.0, e).repeat_interleave(32, 1)
    mag = m.abs()
    idx = torch.where(mag < 2, mag * 2, torch.where(mag < 4, mag + 2, mag / 2 + 4)).round().long()
    code = idx | ((m < 0) & (idx != 0)).long() << 3
    packed = (code[:, 0::2] | code[:, 1::2] << 4).to(torch.uint8)
    slots = slots.long().cpu()
    pg, off = slots // INDEX_PAGE, slots % INDEX_PAGE
    host = out.cpu()
    host[pg[:, None], off[:, None] * 64 + torch.arange(64)] = packed
    host[pg[:, None], INDEX_PAGE * 64 + off[:, None] * 4 + torch.arange(4)] = (e + 127).to(torch.uint8)
    return host.to(cache.device)


# ---------------------------------------------------------------------------------------------- readers


def _index_pool(cache: torch.Tensor) -> SimpleNamespace:
    """A stand-in for the layer's DeepSeekV4IndexerPool (the attributes its methods read)."""
    return SimpleNamespace(index_k_with_scale_buffer=[cache], start_layer=0, page_size=INDEX_PAGE,
                           use_fp4_indexer=True, uses_aiter_fp4_layout=False, index_k_rne=True, index_k_page8=False,
                           size=cache.shape[0] * INDEX_PAGE)  # fmt: skip


def read_back(kvcache: torch.Tensor, index_cache: torch.Tensor, t: dict, case: Case) -> dict[str, torch.Tensor]:
    kr = sibling(__file__, "k_norm_rope_flashmla")
    mp = import_module("sglang.srt.mem_cache.deepseek_v4_memory_pool")
    slots = out_slots(t, case)
    kv = kr.read_back(kvcache, slots, SWA_PAGE // case.params["ratio"])
    index_k = mp.DeepSeekV4IndexerPool.get_index_k_dequant(_index_pool(index_cache), 0, slots)
    return {"kv": kv, "index_k": index_k.float()}


# ---------------------------------------------------------------------------------------------- metrics


def kv_bound(v: torch.Tensor) -> torch.Tensor:
    """Half a step of each quantizer of the main store at the chain's value v: the fp4 step at its e4m3 scale, plus
    (nope) the fp8 ulp of the fake-quantized value at its group's scale."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    s = kv_scales(v)
    fq = kv_fake_quant(v)
    b = 0.5 * e2m1_step((v / s).clamp(-6, 6)) * s
    scale = dsv4.pow2(kr.scale_exponents(fq, FP8_FLOOR)).repeat_interleave(dsv4.SCALE_GROUP, 1)
    b[:, :NOPE] += 0.5 * kr.fp8_ulp(fq[:, :NOPE] / scale) * scale
    return b


def index_bound(k: torch.Tensor) -> torch.Tensor:
    s = index_scales(k)
    return 0.5 * e2m1_step((k / s).clamp(-6, 6)) * s


def _worst(name: str, err: torch.Tensor) -> Metric:
    if not err.numel():
        return Metric(name, 0.0)
    at = divmod(int(err.argmax()), err.shape[1])
    return Metric(name, float(err.max()), detail={"at": list(at)})


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """Against the stated chain's values v (bf16 rounding points included): `kv_err_vs_bound` / `index_err_vs_bound`,
    the worst |got - v| over half a step of every quantizer the value went through (<= 1 when each rounds to
    nearest on the stated grid: a coarser scale, a wrong rope position or a missing norm passes it); and
    `kv_code_mismatch` / `index_code_mismatch`, the share of elements not equal to the stated encoding of v (a
    writer that skips the fp4 fake-quant is within the bound but mismatches most elements)."""
    t = {k: v.cpu() for k, v in inputs.items()}
    v, k = chain(t, case, bf16=True)
    got_kv, got_k = outputs["kv"].cpu().double(), outputs["index_k"].cpu().double()
    kv_err = ((got_kv - v).abs() / kv_bound(v)).nan_to_num(nan=math.inf)
    k_err = ((got_k - k).abs() / index_bound(k)).nan_to_num(nan=math.inf)
    n = max(v.numel(), 1)
    return [
        _worst("kv_err_vs_bound", kv_err),
        _worst("index_err_vs_bound", k_err),
        Metric("kv_code_mismatch", float((got_kv != kv_decoded(v)).sum()) / n, detail={"of": v.numel()}),
        Metric(
            "index_code_mismatch",
            float((got_k != index_decoded(k)).sum()) / max(k.numel(), 1),
            detail={"of": k.numel()},
        ),  # fmt: skip
    ]


# ---------------------------------------------------------------------------------------------- SGLang's pieces


def _state(case: Case, dev: torch.device):
    """The ratio-2 pending-pair ring, SGLang's CompressStatePool (ring 2, one row pair per request slot)."""
    cs = import_module("sglang.srt.mem_cache.deepseek_v4_compress_state")
    B = len(case.params["lens"])
    return cs.CompressStatePool(size=(B + 1) * 2, ring_size=2, overlap=False, head_dim=D, dtype=torch.float32,
                                device=str(dev), enable_memory_saver=False, ratio=2, request_scoped=True)  # fmt: skip


def _stand_ins(t: dict, case: Case, store_main: Callable) -> tuple[SimpleNamespace, SimpleNamespace, dict]:
    """(backend, layer, caches): stand-ins holding what `_low_ratio_compress_fused` / `_low_ratio_compress_torch`
    read, with SGLang's own methods bound where they compute (the compressor's project / finish / pool_pairs, the
    indexer's forward_wk / index_keys, the backend's pair partners and group write, the index pool's store)."""
    ds = import_module("sglang.srt.layers.attention.dsv4.dsv41_sparse")
    be = import_module("sglang.srt.layers.attention.deepseek_v4_backend")
    mp = import_module("sglang.srt.mem_cache.deepseek_v4_memory_pool")
    kl = import_module("sglang.kernels.ops.attention.dsv4.kv_layout")
    r = case.params["ratio"]
    dev = t["kv_in"].device
    norm = ds.RMSNorm(D, EPS).to(dev)
    norm.weight.data = t["norm_weight"].clone()
    k_norm = ds.RMSNorm(IDX, EPS).to(dev)
    k_norm.weight.data = t["k_norm_weight"].clone()
    wk = torch.nn.Linear(D, IDX, bias=False, dtype=torch.bfloat16, device=dev)
    wk.weight.data = t["wk"].clone()
    Comp, Idx = ds.DeepseekV41Compressor, ds.DeepseekV41Indexer
    # the op's input is the projection's output: wkv / wkv_gate stand as the identity
    comp = SimpleNamespace(compress_ratio=r, norm=norm, use_fused_gate=r > 1, use_fused_compress=True,
                           wkv=lambda x: x, project_fused=lambda x: x, pool_pairs=Comp.pool_pairs)  # fmt: skip
    comp.project = MethodType(Comp.project, comp)
    comp.finish = MethodType(Comp.finish, comp)
    indexer = SimpleNamespace(owns_k=True, index_head_dim=IDX, rope_head_dim=ROPE, k_norm=k_norm, wk=wk)
    indexer.forward_wk = MethodType(Idx.forward_wk, indexer)
    indexer.index_keys = MethodType(Idx.index_keys, indexer)
    layer = SimpleNamespace(layer_id=0, compress_ratio=r, rope_head_dim=ROPE, freqs_cis=t["freqs_cis"],
                            compressor=comp, indexer=indexer)  # fmt: skip
    caches = {"kv": t["kvcache"].clone(), "index": t["index_cache"].clone()}
    idx_pool = _index_pool(caches["index"])
    state = _state(case, dev) if r == 2 else None
    pool = SimpleNamespace(
        uniform_fp8=False,
        get_extra_key_buffer=lambda lid: caches["kv"],
        get_extra_key_page_size=lambda lid: SWA_PAGE // r,
        get_extra_key_layout=lambda lid: kl.KVLayout.V4,
        get_attention_compress_states=lambda lid: state,
        low_ratio_index_k_is_split=lambda lid: False,
        get_index_k_with_scale_buffer=lambda lid: caches["index"],
        set_index_k_fp4=lambda layer_id, loc, cache_k: mp.DeepSeekV4IndexerPool.set_index_fp4(
            idx_pool, 0, loc, cache_k
        ),
        set_extra_key_buffer_fused=lambda layer_id, loc, cache_k, freqs_cis=None: store_main(caches, loc, cache_k),
    )
    backend = SimpleNamespace(token_to_kv_pool=pool, forward_metadata=SimpleNamespace(core_metadata=None))
    B = be.DeepseekV4AttnBackend
    for name in ("_low_ratio_pair_partners", "_low_ratio_write_group"):
        setattr(backend, name, MethodType(getattr(B, name), backend))
    return backend, layer, caches


def _store_main(caches: dict, loc: torch.Tensor, cache_k: torch.Tensor, ratio: int) -> None:
    """The pool's V4 store of the finished (fake-quantized, rotated) rows: SGLang's `fused_store_cache` (JIT) on a
    GPU; on the CPU this file's encoder of the V4 layout stands in (the rule: kernels/k_norm_rope_flashmla.py)."""
    if cache_k.is_cuda:
        attn = import_module("sglang.kernels.ops.attention.dsv4.attn")
        kl = import_module("sglang.kernels.ops.attention.dsv4.kv_layout")
        attn.fused_store_cache(input=cache_k, cache=caches["kv"], indices=loc, page_size=SWA_PAGE // ratio,
                               type="flashmla", layout=kl.KVLayout.V4)  # fmt: skip
        return
    kr = sibling(__file__, "k_norm_rope_flashmla")
    caches["kv"] = kr.write_rows(caches["kv"], loc, *kr.encode(cache_k.double()), SWA_PAGE // ratio)


def _steps(t: dict, case: Case, backend: SimpleNamespace) -> Iterator[tuple[str, dict]]:
    """Each forward step's rows (x, req, pos, extend offsets) with the backend's core metadata set as production
    builds it (`_low_ratio_compression_metadata`); a decode step's padded graph rows carry raw_out_loc 0, req 0,
    position 0 (PaddingPolicy.ZERO)."""
    be = import_module("sglang.srt.layers.attention.deepseek_v4_backend")
    r, dev = case.params["ratio"], t["kv_in"].device
    starts = [sum(case.params["lens"][:b]) for b in range(len(case.params["lens"]))]
    for kind, parts in steps(case):
        rows, req, pos, raw, first, counts = [], [], [], [], [], []
        for b, p0, n in parts:
            p = torch.arange(p0, p0 + n, device=dev)
            first.append(len(rows))
            counts.append(n)
            rows += [starts[b] + int(q) for q in p]
            req.append(torch.full((n,), b + 1, device=dev))  # req_pool_idx: slot 0 is never a live request
            pos.append(p)
            raw.append(full_slot(t, b, p))
        x = t["kv_in"][torch.tensor(rows, device=dev)]
        req_t, pos_t, raw_t = torch.cat(req), torch.cat(pos), torch.cat(raw)
        if kind == "decode" and case.params["pad"]:
            k = case.params["pad"]
            x = torch.cat([x, torch.zeros(k, x.shape[1], dtype=x.dtype, device=dev)])
            z = torch.zeros(k, dtype=torch.int64, device=dev)
            req_t, pos_t, raw_t = torch.cat([req_t, z]), torch.cat([pos_t, z]), torch.cat([raw_t, z])
        out_loc, _ = be._low_ratio_compression_metadata(r, pos_t + 1, raw_t)
        c1 = out_loc if r == 1 else None
        c2 = out_loc if r == 2 else None
        backend.forward_metadata.core_metadata = SimpleNamespace(raw_out_loc=raw_t, c1_out_loc=c1, c2_out_loc=c2)
        offsets = (torch.tensor(first, dtype=torch.int32, device=dev), torch.tensor(counts, dtype=torch.int32,
                   device=dev)) if kind == "extend" else None  # fmt: skip
        yield kind, {"x": x.contiguous(), "req": req_t.long(), "pos": pos_t.long(), "extend_offsets": offsets}


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`DeepseekV4AttnBackend._low_ratio_compress_fused` over every step: the JIT c1 / c2 kernels and the fused
    index-K store, as SM120 runs them."""
    be = import_module("sglang.srt.layers.attention.deepseek_v4_backend")
    backend, layer, caches = _stand_ins(t, case, lambda c, loc, k: _store_main(c, loc, k, case.params["ratio"]))
    for _, s in _steps(t, case, backend):
        be.DeepseekV4AttnBackend._low_ratio_compress_fused(backend, layer, s["x"], s["req"], s["pos"],
                                                           extend_offsets=s["extend_offsets"])  # fmt: skip
    return read_back(caches["kv"], caches["index"], t, case)


# ---------------------------------------------------------------------------------------------- the interpreter


@triton.jit
def _rint(x):
    """`libdevice.rint` (a stub under Triton's interpreter: it returns None) as a Triton round-half-to-even, for
    the non-negative magnitudes `rope_tail_fake_quant_fp4_row` rounds."""
    r = tl.floor(x + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(((r - x) == 0.5) & odd, r - 1.0, r)


def _rmsnorm_fp32_launch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rmsnorm_fp32` minus its `assert x.is_cuda`: its kernel launched exactly as the wrapper launches it."""
    rm = import_module("sglang.kernels.ops.layernorm.rmsnorm_fp32")
    out = torch.empty_like(x)
    dim = x.shape[-1]
    rows = x.numel() // dim
    if rows:
        rm._rmsnorm_fp32_kernel[(rows,)](x, weight, out, dim, eps, triton.next_power_of_2(dim), num_warps=4,
                                         enable_fp_fusion=False)  # fmt: skip
    return out


@contextlib.contextmanager
def _interpreter_as_gpu(ds) -> Iterator[None]:
    """What Triton's interpreter does unlike a GPU, put right for the call: its casts (op.as_on_a_gpu),
    `libdevice.rint` (a stub there) and `rmsnorm_fp32`'s CUDA assertion (see _rmsnorm_fp32_launch)."""
    fq = import_module("sglang.kernels.ops.attention.dsv4.fp4_rope_fake_quant")
    with (
        as_on_a_gpu(),
        mock.patch.object(fq, "libdevice", SimpleNamespace(rint=_rint)),
        mock.patch.object(ds, "rmsnorm_fp32", _rmsnorm_fp32_launch),
    ):
        yield


# ---------------------------------------------------------------------------------------------- paths


def run_unfused(t: dict, case: Case, triton_pieces: bool, patches: Callable[[], contextlib.AbstractContextManager]
                | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """`DeepseekV4AttnBackend._low_ratio_compress_torch` over every step (SGLang's unfused path), its pieces the
    Triton ones (`triton_pieces`: `rmsnorm_fp32`, `rope_tail_fake_quant_fp4`, as on a CUDA GPU) or the torch ones.
    `patches()` wraps the calls (tests/ops plant faults through it)."""
    ds = import_module("sglang.srt.layers.attention.dsv4.dsv41_sparse")
    be = import_module("sglang.srt.layers.attention.deepseek_v4_backend")
    backend, layer, caches = _stand_ins(t, case, lambda c, loc, k: _store_main(c, loc, k, case.params["ratio"]))
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(ds, "_fused_dsv41_kernels", lambda x: triton_pieces))
        if triton_pieces and interpreted():
            stack.enter_context(_interpreter_as_gpu(ds))
        if patches is not None:
            stack.enter_context(patches())
        for _, s in _steps(t, case, backend):
            be.DeepseekV4AttnBackend._low_ratio_compress_torch(backend, layer, s["x"], s["req"], s["pos"])
    return read_back(caches["kv"], caches["index"], t, case)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return run_unfused(t, case, triton_pieces=False)


def sglang_triton(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return run_unfused(t, case, triton_pieces=True)


def oracle_bytes(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The stated encodings of the chain's values, written by this file's layouts and read back by SGLang's readers:
    shows that the layouts and scales the oracle states are the ones SGLang reads."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    v, k = chain(t, case, bf16=True)
    slots = out_slots(t, case)
    kvcache = kr.write_rows(t["kvcache"], slots, *kv_encoding(v), SWA_PAGE // case.params["ratio"])
    index_cache = write_index(t["index_cache"], slots, index_decoded(k))
    return read_back(kvcache, index_cache, t, case)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 pooling + RMSNorm + RoPE (main) and wk + RMSNorm + RoPE (index)"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        note="_low_ratio_compress_fused: JIT c1 / c2 decode / c2 prefill + index_k_norm_rope_pack_store, read back "
        "by SGLang's readers",
    ),
    Path(
        "sglang.triton",
        sglang_triton,
        note="_low_ratio_compress_torch with the Triton pieces (rmsnorm_fp32, rope_tail_fake_quant_fp4, "
        "store_fp4_index_k_cache); the V4 store is fused_store_cache on a GPU, this file's encoder on the CPU",
    ),
    Path(
        "sglang.torch",
        sglang_torch,
        note="_low_ratio_compress_torch with the torch pieces (RMSNorm, rope_tail, fake_quant_*)",
    ),
    Path("oracle.bytes", oracle_bytes, note="the stated encodings read back by SGLang's readers"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.layers.attention.deepseek_v4_backend:DeepseekV4AttnBackend._low_ratio_compress_fused": (
        "on stand-ins of the backend, pool and layer (the projections wkv / wkv_gate as the identity: the inputs are "
        "their outputs); extend and decode, not target-verify (draft_len > 1) nor the prefill-graph `projected` "
        "buffers; V4 layout only (SM120's), not V41 / V41_FP4 / UNIFORM_FP8"
    ),
    "sglang.kernels.ops.attention.dsv4.low_ratio_compress:c1_decode_norm_rope_store": "V4 layout only",
    "sglang.kernels.ops.attention.dsv4.low_ratio_compress:c2_decode_norm_rope_store": (
        "V4 layout, draft_len 1 (no verify), ring 2"
    ),
    "sglang.kernels.ops.attention.dsv4.low_ratio_compress:c2_prefill_norm_rope_store": "V4 layout, ring 2",
    "sglang.kernels.ops.attention.dsv4.fp4_indexer_rope:index_k_norm_rope_pack_store": "ratios 1 and 2, page 64",
    "sglang.kernels.ops.layernorm.rmsnorm_fp32:rmsnorm_fp32": (
        "bf16 rows of 512 and 128 (compressor norm, k_norm); on the CPU its kernel is launched as the wrapper "
        "launches it (the wrapper asserts CUDA)"
    ),
    "sglang.kernels.ops.attention.dsv4.fp4_rope_fake_quant:rope_tail_fake_quant_fp4": (
        "compressed KV (per-16 e4m3) and index K (per-32 ue8m0) rows with per-row freqs; not the positions= "
        "gather nor inverse (the index queries' use)"
    ),
}

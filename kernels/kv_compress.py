"""DeepSeek-V4 c4/c128 KV compressor and its cache write (the main compressed KV and the c4 indexer's K),
checked through the caches' readers: what a path writes is decoded by SGLang's own readers before it is
compared with the float64 oracle.

Call site: `srt/layers/attention/dsv4/compressor_v2.py CompressorBackendMixin.forward_unified` (the CUDA
backend's `forward_core_compressor` / `forward_indexer_compressor`) -> `_forward_compress_all_in_one`:
  1. `kernels/ops/attention/dsv4/compress.py:compress_forward(kv_score_buffer, kv_score_input, ape.view(-1, D),
     plan, head_dim=D, compress_ratio=r)`: JIT `c4_v2.cuh` / `c128_v2.cuh` (FlashCompress{4,128}Kernel), the
     plan from `CompressorPrefillPlan.generate` / `CompressorDecodePlan.generate` (JIT `c_plan.cuh`);
  2. `compress_norm_rope_store(kv, plan, norm_weight, norm_eps, freq_cis, out_loc, kvcache, page_size)`: JIT
     `fused_norm_rope_v2.cuh` (FusedNormRopeKernel: the indexer variant for D = 128, FlashMLA for D = 512).
SGLang has no CPU implementation of either (the HIP branch `_forward_unified_hip` also calls the JIT
compress_forward); SGLANG_OPT_USE_ONLINE_COMPRESS (c128 online state, `c128_online_v2.cuh`) is off by default.

Inputs, in the production layout (one layer; requests prefilled from position 0, ragged rows in order):
  kv_score   [T, 2 * coff * D] fp32, the wkv_gate output (`linear_bf16_fp32`): c4 (coff 2) per token
             | kv overlap | kv | score overlap | score |, c128 (coff 1) | kv | score |
  ape        [r, coff * D] fp32, the checkpoint's parameter, per row | overlap | current | as kv_score's halves;
             production's loader rearranges it (`Compressor._apply_ape_hotfix`: chunk + cat, so that
             ape.view(-1, D) has the 4 overlap rows, then the 4 current rows, as c4_forward reads it)
  norm_weight [D] fp32 (RMSNorm weight_dtype fp32), eps 1e-6; freqs_cis [max_pos, 32] complex64
  slots      [N] int64, the cache slot of each compressed token (request-major, block order)
  kvcache    uint8 pages filled with random bytes: main KV, V4 layout (kernels/k_norm_rope_flashmla.py), page
             256 / r tokens (64 for c4, 2 for c128); indexer K (c4 only, D = 128), 64-token pages of 132 B per
             token: 64 x 128 fp8-e4m3 values, then 64 fp32 scales
The definition (c4_v2.cuh c4_forward, c128_v2.cuh c128_forward, fused_norm_rope_v2.cuh), per compressed token
of block n (tokens r*n .. r*n + r - 1, produced once the block is full, i.e. at seq_len = r*(n+1)):
  c4:   per dim, softmax over 8 positions of score + ape weighting kv: 4 overlap positions from block n - 1
        (kv overlap, score overlap, ape[i, :D]) and 4 current (kv, score, ape[i, D:]); block 0 has no overlap
        (the kernel's kv = 0, score = -FLT_MAX: weight 0)
  c128: per dim, softmax over the block's 128 positions of score + ape[i] weighting kv
  y = RMSNorm(out) * w; the last 64 dims rotated as 32 (re, im) pairs by freqs_cis[r * n] (= seq_len - r)
  main (D = 512): dims < 448 rounded to bf16, then per 64-group e = ceil(log2(max(amax, 1e-4) / 448)) (UE8M0
        byte 127 + e), fp8 = rn(y / 2^e); dims >= 448 stored bf16
  indexer (D = 128): y' = H y / sqrt(128), H the Sylvester (natural order) Hadamard, on all 128 dims after RoPE;
        one fp32 scale s = max(amax, 1e-4) / 448 per token, stored raw (not a power of two), fp8 = rn(y' / s)

Output `kv` [N, D]: the written slots read back by SGLang's readers, float32: the main KV by
`flash_mla_sm120._gather_and_dequant` (as kernels/k_norm_rope_flashmla.py), the indexer K by
`fp8_paged_mqa_logits_torch_sm120` (SM120's indexer fallback, kernels/indexer_logits.py) probed with one-hot
queries: head +e_d weighted 1 and head -e_d weighted -1 give scale * k[d] exactly. The oracle's `kv` is the
exact float64 y (y'): the drift is the quantization, judged in ulps of the stated encoding (metrics below).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, case_maker, dsv4, import_module, sibling

OP = "kv_compress"
# fp8 values with per-group (main) or per-token (indexer) scales: calc_diff is the fp8 rounding, ~3e-4,
# under fp8's default ceilings; the sharp checks are the ulp metrics
DTYPE = "fp8"
PRIMARY = "kv"
OUTPUTS = {}  # every path returns the harness's read-back of the caches it wrote, not an output of SGLang's
TOLERANCE = (1e-2, 1e-1)
MAIN_D, INDEX_D, ROPE, NOPE = 512, 128, 64, 448
EPS = 1e-6  # DeepSeekV4Config.rms_norm_eps: Compressor.norm
SCALE_FLOOR = 1e-4  # fmaxf(1e-4f, abs_max) in fused_norm_rope_v2.cuh (both variants)
INDEX_PAGE = 64  # get_index_k_page_size(4) = 256 // 4
INDEX_TOKEN = INDEX_D + 4
SWA_PAGE = 256  # the model's page_size; the compressed pools page it by 256 // r
CEILINGS = {
    # main KV: rn(fp8) is <= 0.5 ulp of the stated encoding; the bf16 rounding before it adds <= 2^-5 ulp
    # (bf16 keeps 4 more bits than e4m3 plus round to nearest), 2^-4 allowing the interpreter's truncation as
    # kernels/k_norm_rope_flashmla.py does; 2^-6 covers the fp32 pooling, norm and rope before the rounding
    "nope_err_ulps": 0.5 + 2.0**-4 + 2.0**-6,
    # one bf16 rounding of the fp32-rotated pair: 0.5 ulp, 2^-6 for the fp32 arithmetic before it
    "rope_err_ulps": 0.5 + 2.0**-6,
    # indexer K: one rn(fp8) at the stated raw scale, 2^-6 for fp32 pooling, norm, rope, Hadamard and 1/s
    "index_err_ulps": 0.5 + 2.0**-6,
}


_case = case_maker(decode=0, adversarial=False, max_pos=4096)


def cases() -> list[Case]:
    out = [
        # two requests, one ending inside a block (its partial block writes nothing), one exactly on a block
        _case("tiny_c4_main", {"tiny"}, target="main", ratio=4, lens=(14, 8)),
        _case("tiny_c4_indexer_adversarial", {"tiny"}, target="indexer", ratio=4, lens=(28, 5), adversarial=True),
        _case("tiny_c128_main", {"tiny"}, target="main", ratio=128, lens=(256, 130)),
    ]
    # DeepSeek-V4-Flash: one KV head and one indexer head, so TP does not change the shapes. Prefill chunks of
    # T tokens from position 0; decode batches whose last r tokens go through the decode kernel one step each
    for target, ratio in (("main", 4), ("indexer", 4), ("main", 128)):
        name = f"c{ratio}_{target}"
        for t in (1024, 8192):
            out.append(_case(f"{name}_t{t}_prefill", {"flash"}, target=target, ratio=ratio, lens=(t,), max_pos=65536))
        for b in (1, 8, 64):
            lens = tuple(1000 + 61 * i for i in range(b))
            out.append(_case(f"{name}_b{b}_decode", {"flash"}, target=target, ratio=ratio, lens=lens,
                             decode=ratio, max_pos=65536))  # fmt: skip
        out.append(_case(f"{name}_t2048_adversarial", {"flash"}, target=target, ratio=ratio, lens=(2048, 300),
                         adversarial=True, max_pos=65536))  # fmt: skip
    return out


def _dims(case: Case) -> tuple[int, int, int]:
    """(head dim D, coff, ratio r)."""
    p = case.params
    return (INDEX_D if p["target"] == "indexer" else MAIN_D), (2 if p["ratio"] == 4 else 1), p["ratio"]


def num_compressed(case: Case) -> list[int]:
    """Compressed tokens of each request: one per full block."""
    return [n // case.params["ratio"] for n in case.params["lens"]]


def page_size(case: Case) -> int:
    return INDEX_PAGE if case.params["target"] == "indexer" else SWA_PAGE // case.params["ratio"]


def page_bytes(case: Case) -> int:
    return INDEX_PAGE * INDEX_TOKEN if case.params["target"] == "indexer" else dsv4.page_bytes(page_size(case))


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """kv N(0,1) with per-token magnitudes 2^-3..2^3; scores N(0, 2^2) so the softmax is far from uniform; ape
    N(0, 0.5^2); norm weights exp(N(0, 0.3)) times a per-64-group power of two 2^-4..2^3 (main: the UE8M0 scales
    differ between groups). Adversarial (request 0): block 1 has one position's score 120 above the rest in every
    dim (the softmax saturates), block 2 equal scores + ape (a plain average), block 3's kv all zero (y = 0: the
    1e-4 scale floor)."""
    p = case.params
    D, coff, r = _dims(case)
    T = sum(p["lens"])
    kv_score = torch.randn(T, 2 * coff * D, generator=gen)
    kv_score[:, : coff * D] *= torch.pow(2.0, torch.randint(-3, 4, (T, 1), generator=gen).float())
    kv_score[:, coff * D :] *= 2.0
    ape = torch.randn(r, coff * D, generator=gen) * 0.5
    group = torch.pow(2.0, torch.randint(-4, 4, (D // 64,), generator=gen).float()).repeat_interleave(64)
    weight = torch.exp(torch.randn(D, generator=gen) * 0.3) * group
    if p["adversarial"] and p["lens"][0] >= 4 * r:
        score = slice(coff * D + (coff - 1) * D, 2 * coff * D)  # the current block's score columns
        kv = slice((coff - 1) * D, coff * D)
        b1 = slice(r, 2 * r)
        kv_score[b1, score] = -60.0
        kv_score[r + 1, score] = 60.0
        b2 = slice(2 * r, 3 * r)
        kv_score[b2, score] = 1.5 - ape[:, (coff - 1) * D :]
        if coff == 2:  # c4: the overlap half of block 2 sees block 1's overlap scores; make them equal too
            kv_score[b1, 2 * D : 3 * D] = 1.5 - ape[:, :D]
        b3 = slice(3 * r, 4 * r)
        kv_score[b3, kv] = 0.0
        if coff == 2:
            kv_score[b2, :D] = 0.0  # block 3's overlap kv comes from block 2
    n = sum(num_compressed(case))
    ps = page_size(case)
    pages = math.ceil(n / ps) + 2
    # slots scattered over the pool, none in page 0 (the pool's padding page, where unused out_loc rows point)
    slots = torch.randperm((pages - 1) * ps, generator=gen)[:n] + ps
    return {
        "kv_score": kv_score.contiguous(),
        "ape": ape,
        "norm_weight": weight,
        "freqs_cis": sibling(__file__, "k_norm_rope_flashmla").freqs_table(p["max_pos"]),
        "slots": slots.to(torch.int64),
        "kvcache": torch.randint(0, 256, (pages, page_bytes(case)), generator=gen, dtype=torch.uint8),
    }


def cost(case: Case) -> tuple[float, float]:
    """kv_score read once (fp32), each compressed token written (584 B main, 132 B indexer); per input value
    about 4 flops of softmax (exp, max, sum, multiply-add), per compressed value ~4 for the norm and the
    quantization, plus 2 * 7 per value for the indexer's Hadamard butterflies."""
    D, coff, r = _dims(case)
    T, n = sum(case.params["lens"]), sum(num_compressed(case))
    row = INDEX_TOKEN if case.params["target"] == "indexer" else dsv4.TOKEN_BYTES
    flops = T * coff * D * 4 + n * D * (4 + (14 if D == INDEX_D else 0))
    return float(T * 2 * coff * D * 4 + n * (row + 8) + r * coff * D * 4 + D * 4), float(flops)


# ---------------------------------------------------------------------------------------------- oracle


def block_starts(case: Case) -> list[tuple[int, int, int]]:
    """(request, block n, ragged row of the block's first token) of every compressed token, in order."""
    r, out, base = case.params["ratio"], [], 0
    for b, n in enumerate(case.params["lens"]):
        out += [(b, k, base + k * r) for k in range(n // r)]
        base += n
    return out


def pool(kv_score: torch.Tensor, ape: torch.Tensor, case: Case) -> torch.Tensor:
    """float64 compressed KV [N, D], vectorized: gather each block's positions, softmax over them."""
    D, coff, r = _dims(case)
    x, a = kv_score.double(), ape.double()
    starts = block_starts(case)
    if not starts:
        return torch.zeros(0, D, dtype=torch.float64, device=x.device)
    first = torch.tensor([s for _, _, s in starts], device=x.device)
    has_prev = torch.tensor([k > 0 for _, k, _ in starts], device=x.device)
    rows = first[:, None] + torch.arange(r, device=x.device)  # [N, r]
    kv = x[rows, (coff - 1) * D : coff * D]  # [N, r, D]
    score = x[rows, (2 * coff - 1) * D :] + a[:, (coff - 1) * D :]
    if coff == 2:  # c4: the previous block's overlap halves, weight 0 for block 0
        prev = (rows - r).clamp(min=0)
        kv = torch.cat([x[prev, :D], kv], 1)
        s_prev = torch.where(has_prev[:, None, None], x[prev, 2 * D : 3 * D] + a[:, :D], -math.inf)
        score = torch.cat([s_prev, score], 1)
    return (torch.softmax(score, 1) * kv).sum(1)


def hadamard(n: int, device=None) -> torch.Tensor:
    """The Sylvester (natural order) Hadamard matrix, float64 [n, n]: H[i, j] = (-1)^popcount(i & j)."""
    i = torch.arange(n, device=device)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return 1.0 - 2.0 * parity.double()


def positions(case: Case, device=None) -> torch.Tensor:
    """RoPE position of each compressed token: seq_len - r = the block's first position."""
    r = case.params["ratio"]
    return torch.tensor([k * r for _, k, _ in block_starts(case)], dtype=torch.int64, device=device)


def exact(t: dict, case: Case) -> torch.Tensor:
    """float64 pooling, RMSNorm, RoPE (and for the indexer the scaled Hadamard): [N, D]."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    pooled = pool(t["kv_score"], t["ape"], case)
    y = kr.exact(pooled, t["norm_weight"], t["freqs_cis"], positions(case, pooled.device))
    if case.params["target"] == "indexer":
        y = y @ hadamard(INDEX_D, y.device).T / math.sqrt(INDEX_D)
    return y


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"kv": exact(t, case)}


# ---------------------------------------------------------------------------------------------- encodings


def main_encoding(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The main KV's stated encoding of float64 rows: (nope fp8 [N, 448], UE8M0 bytes [N, 7], rope bf16 [N, 64]):
    nope rounded to bf16 first, its groups' exponents from that."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    nope = y[:, :NOPE].to(torch.bfloat16).double()
    e = kr.scale_exponents(nope, SCALE_FLOOR)
    scaled = nope.reshape(-1, NOPE // dsv4.SCALE_GROUP, dsv4.SCALE_GROUP) / dsv4.pow2(e)[..., None]
    return scaled.reshape(-1, NOPE).to(torch.float8_e4m3fn), (e + 127).to(torch.uint8), y[:, NOPE:].to(torch.bfloat16)


def index_scale(y: torch.Tensor) -> torch.Tensor:
    """[N] the indexer row's fp32 scale, max(amax, 1e-4) / 448, raw."""
    return (y.abs().amax(-1).clamp(min=SCALE_FLOOR) / dsv4.FP8_MAX).float()


def index_encoding(y: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The indexer row's stated encoding: (fp8 [N, 128], fp32 scale [N])."""
    s = index_scale(y) if scale is None else scale
    return (y / s.double()[:, None]).clamp(-dsv4.FP8_MAX, dsv4.FP8_MAX).to(torch.float8_e4m3fn), s


def write_index_rows(cache: torch.Tensor, slots: torch.Tensor, k8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`cache` (a copy) with rows written in the indexer page layout (written here, not by SGLang's writer):
    values at page * 8448 + off * 128, the scale at page * 8448 + 64 * 128 + off * 4."""
    out = cache.clone()
    pg, off = slots.long() // INDEX_PAGE, slots.long() % INDEX_PAGE
    cols = torch.arange(INDEX_D, device=out.device)
    out[pg[:, None], off[:, None] * INDEX_D + cols] = k8.view(torch.uint8).to(out.device)
    s = scale.float().contiguous().view(torch.uint8).reshape(-1, 4).to(out.device)
    out[pg[:, None], INDEX_PAGE * INDEX_D + off[:, None] * 4 + torch.arange(4, device=out.device)] = s
    return out


# ---------------------------------------------------------------------------------------------- readers


def read_index(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The indexer K at `slots` [N, 128] float32, read by SGLang's `fp8_paged_mqa_logits_torch_sm120` with one-hot
    queries: query row d has heads (+e_d, -e_d) weighted (1, -1), so logit[d, t] = scale[t] * k8[t, d], exact."""
    fn = sibling(__file__, "indexer_logits").indexer_function("fp8_paged_mqa_logits_torch_sm120")
    pages = cache.shape[0]
    dev = cache.device
    eye = torch.eye(INDEX_D, device=dev)
    q = torch.stack([eye, -eye], 1).to(torch.float8_e4m3fn).view(INDEX_D, 1, 2, INDEX_D)
    w = torch.tensor([[1.0, -1.0]], device=dev).expand(INDEX_D, 2).contiguous()
    seq = torch.full((INDEX_D,), pages * INDEX_PAGE, dtype=torch.int32, device=dev)
    table = torch.arange(pages, dtype=torch.int32, device=dev).expand(INDEX_D, pages).contiguous()
    logits = fn(q, cache.view(pages, INDEX_PAGE, 1, INDEX_TOKEN), w, seq, table, None, pages * INDEX_PAGE, False)
    return logits[:, slots.long()].T.float().contiguous()


def read_back(cache: torch.Tensor, t: dict, case: Case) -> dict[str, torch.Tensor]:
    if case.params["target"] == "indexer":
        return {"kv": read_index(cache, t["slots"])}
    kr = sibling(__file__, "k_norm_rope_flashmla")
    return {"kv": kr.read_back(cache, t["slots"], page_size(case))}


# ---------------------------------------------------------------------------------------------- metrics


def index_ulp_errors(got: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|got - y| in fp8 ulps of the indexer encoding at the oracle's raw scale: [N, 128]."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    s = index_scale(y).double()[:, None]
    return ((got.double() - y).abs() / (kr.fp8_ulp(y / s) * s)).nan_to_num(nan=math.inf)


def main_ulp_errors(got: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|got - y| in ulps of the main encoding: fp8 ulps at the exponents of the bf16-rounded nope (the stated
    rule), bf16 ulps for the rope dims."""
    kr = sibling(__file__, "k_norm_rope_flashmla")
    got = got.double()
    nope_b = y[:, :NOPE].to(torch.bfloat16).double()
    scale = dsv4.pow2(kr.scale_exponents(nope_b, SCALE_FLOOR)).repeat_interleave(dsv4.SCALE_GROUP, 1)
    nope = (got[:, :NOPE] - y[:, :NOPE]).abs() / (kr.fp8_ulp(y[:, :NOPE] / scale) * scale)
    rope = (got[:, NOPE:] - y[:, NOPE:]).abs() / kr.bf16_ulp(y[:, NOPE:])
    return nope.nan_to_num(nan=math.inf), rope.nan_to_num(nan=math.inf)


def _worst(name: str, err: torch.Tensor) -> Metric:
    if not err.numel():
        return Metric(name, 0.0, unit="ulp")
    at = divmod(int(err.argmax()), err.shape[1])
    return Metric(name, float(err.max()), unit="ulp", detail={"at": list(at)})


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """Main KV: `nope_err_ulps` (fp8 ulps of the stated encoding) and `rope_err_ulps` (bf16 ulps). Indexer K:
    `index_err_ulps` (fp8 ulps at the raw amax/448 scale: a writer storing a power-of-two scale, with its
    coarser grid, shows here even where calc_diff cannot tell)."""
    got, y = outputs["kv"].cpu(), oracle_out["kv"].cpu()
    if case.params["target"] == "indexer":
        return [_worst("index_err_ulps", index_ulp_errors(got, y))]
    nope, rope = main_ulp_errors(got, y)
    return [_worst("nope_err_ulps", nope), _worst("rope_err_ulps", rope)]


# ---------------------------------------------------------------------------------------------- paths


def encode_and_read(t: dict, case: Case, y: torch.Tensor, index_scale_of=None) -> dict[str, torch.Tensor]:
    """Rows `y` [N, D] in the stated encoding, written by this file's layout at the case's slots and read back
    by SGLang's readers. `index_scale_of(y)` replaces the indexer's scale rule (tests/ops plant faults)."""
    if case.params["target"] == "indexer":
        scale = (index_scale_of or index_scale)(y)
        cache = write_index_rows(t["kvcache"], t["slots"], *index_encoding(y, scale))
    else:
        kr = sibling(__file__, "k_norm_rope_flashmla")
        cache = kr.write_rows(t["kvcache"], t["slots"], *main_encoding(y), page_size(case))
    return read_back(cache, t, case)


def oracle_bytes(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The oracle's values in the stated encoding, written by this file's layout and read by SGLang's readers:
    shows that the layout and scales the oracle states are the ones SGLang reads."""
    return encode_and_read(t, case, exact(t, case))


def _ape_as_loaded(t: dict, case: Case) -> torch.Tensor:
    """The ape parameter as production holds it: `Compressor._apply_ape_hotfix` (what its weight loader runs)
    on a stand-in holding our checkpoint-layout input (the method reads only these attributes)."""
    mod = import_module("sglang.srt.layers.attention.dsv4.compressor")
    _, coff, r = _dims(case)
    stand_in = SimpleNamespace(ape=SimpleNamespace(data=t["ape"].clone()), overlap=coff == 2, ratio=r)
    mod.Compressor._apply_ape_hotfix(stand_in)
    return stand_in.ape.data


def _cuda_run(t: dict, case: Case) -> torch.Tensor:
    """Production's two calls over SGLang's own paged test context (identity req_to_token / full_to_swa, fp32
    state pool): each request prefilled from 0 up to len - decode, then `decode` steps of one token per
    request. Where there is no GPU (the SM120 audit's capture) the plans are zero tensors of the right shape:
    the launches are recorded, nothing runs."""
    comp = import_module("sglang.kernels.ops.attention.dsv4.compress")
    p = case.params
    D, coff, r = _dims(case)
    dev = t["kv_score"].device
    on_gpu = dev.type == "cuda"
    lens = list(p["lens"])
    B, dec = len(lens), p["decode"]
    ape = _ape_as_loaded(t, case).view(-1, D)
    cache = t["kvcache"].clone()
    ps = page_size(case)
    starts = [sum(lens[:b]) for b in range(B)]
    # compressed index of each (request, block), and its slot
    slot_of, i = {}, 0
    for b, n in enumerate(lens):
        for k in range(n // r):
            slot_of[(b, k)] = int(t["slots"][i])
            i += 1
    if on_gpu:
        common = import_module("sglang.test.kernels.deepseek_v4.common")
        ctx = common.make_paged_context(B, r, head_dim=D, swa_page_size=SWA_PAGE,
                                        num_swa_pages_per_req=math.ceil(max(lens) / SWA_PAGE) + 1,
                                        max_tokens_per_req=(math.ceil(max(lens) / SWA_PAGE) + 1) * SWA_PAGE,
                                        num_reqs_capacity=max(B, 1))  # fmt: skip
        state = common.make_state_pool(ctx.num_pages, r, D)
    else:
        state = torch.zeros(1, r, 2 * coff * D, dtype=torch.float32)

    def store(kv, plan, out_loc):
        comp.compress_norm_rope_store(kv, plan, norm_weight=t["norm_weight"], norm_eps=EPS, freq_cis=t["freqs_cis"],
                                      out_loc=out_loc, kvcache=cache, page_size=ps)  # fmt: skip

    # prefill: the first len - decode tokens of every request, in one ragged batch
    pre = [n - dec for n in lens]
    rows = torch.cat([torch.arange(starts[b], starts[b] + pre[b]) for b in range(B)]).to(dev)
    x = t["kv_score"][rows].contiguous()
    out_loc = torch.zeros(x.shape[0], dtype=torch.int64, device=dev)
    q = 0
    for b in range(B):
        for pos in range(pre[b]):
            if (pos + 1) % r == 0:
                out_loc[q + pos] = slot_of[(b, pos // r)]
        q += pre[b]
    seq_cpu = torch.tensor(pre, dtype=torch.int64)
    if on_gpu:
        plan = ctx.make_prefill_plan(seq_cpu, seq_cpu.clone(), int(x.shape[0]))
    else:
        n_c = sum(n // r for n in pre)
        plan = comp.CompressorPrefillPlan(r, torch.zeros(n_c, 16, dtype=torch.uint8),
                                          torch.zeros(x.shape[0], 8, dtype=torch.uint8))  # fmt: skip
    kv = comp.compress_forward(state.view(-1, r, 2 * coff * D), x, ape, plan, head_dim=D, compress_ratio=r)
    store(kv, plan, out_loc)
    # decode: one token per request per step
    for step in range(dec):
        seq = torch.tensor([pre[b] + step + 1 for b in range(B)], dtype=torch.int64)
        x = t["kv_score"][torch.tensor([starts[b] + pre[b] + step for b in range(B)])].contiguous()
        out_loc = torch.zeros(B, dtype=torch.int64, device=dev)
        for b in range(B):
            if int(seq[b]) % r == 0:
                out_loc[b] = slot_of[(b, int(seq[b]) // r - 1)]
        if on_gpu:
            plan = ctx.make_decode_plan(seq.to(dev))
        else:
            plan = comp.CompressorDecodePlan(r, torch.zeros(B, 16, dtype=torch.uint8))
        kv = comp.compress_forward(state.view(-1, r, 2 * coff * D), x, ape, plan, head_dim=D, compress_ratio=r)
        store(kv, plan, out_loc)
    return cache


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return read_back(_cuda_run(t, case), t, case)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 pooling + RMSNorm + RoPE (+ scaled Hadamard), before quantization"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        note="compress_forward (JIT c4_v2/c128_v2, c_plan) + compress_norm_rope_store (JIT fused_norm_rope_v2), "
        "read back by SGLang's readers",
    ),
    Path("oracle.bytes", oracle_bytes, note="the oracle's stated encoding read back by SGLang's readers"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsv4.compress:compress_forward": (
        "fp32 state pool, non-online only (SGLANG_OPT_USE_ONLINE_COMPRESS off, the default); prefill from "
        "position 0 then decode, not a chunked prefill over a cached prefix; not the unified-KV ring (use_req_ring)"
    ),
    "sglang.kernels.ops.attention.dsv4.compress:compress_norm_rope_store": (
        "V4 main layout and the FP8 indexer layout; not the FP4 indexer, bf16 / two-pool unified stores, V4.1 "
        "layouts, nor the preshuffled (aiter) indexer layout"
    ),
}

"""DeepSeek-V4 indexer logits: the paged FP8 MQA scores that choose the 512 compressed tokens each
c4-layer query attends to (what replaces DeepGEMM's `fp8_paged_mqa_logits` on SM120).

Call site: `srt/layers/attention/dsv4/indexer.py` (the c4 indexer's forward) picks, in order, the
TileLang kernel (`SGLANG_OPT_USE_TILELANG_INDEXER`, the SM120 default), then
`fp8_paged_mqa_logits_torch_sm120` on SM120 / `fp8_paged_mqa_logits_torch` elsewhere
(`SGLANG_FP8_PAGED_MQA_LOGITS_TORCH`), else DeepGEMM; every one is called as
`fn(q_fp8, kv_cache, weights, seq_lens, page_table, deep_gemm_metadata, max_seq_len, False)`. The
logits go straight to the top-k (kernels/topk_transform.py), which reads only the first
`seq_lens[b]` of each row.

Inputs, in the production layout (built here, independently of SGLang's writers):
  q_fp8       [B, 1, 64, 128] float8_e4m3fn: 64 index heads of 128 (replicated, not split by TP, so
              TP=1 and TP=2 see the same shapes); each (token, head) row quantized to |q| <= 448,
              its scale folded into the weights, as `fused_q_indexer_rope_hadamard_quant` does
  kv_cache    [num_pages, 64, 1, 132] uint8, the fused index-K cache: a 64-token page is 8448 bytes,
              first 64 x 128 fp8-e4m3 values (token-major), then 64 fp32 scales, max(1e-4, amax) / 448
              per token, as SGLang's writer stores them (fused_norm_rope_v2.cuh, the indexer branch: its
              comment says UE8M0, its code keeps the plain quotient, not a power of two); the
              [64, 1, 132] view is only a reshape of those bytes, a "row" of 132 B is not one token
  weights     [B, 64] fp32 (weights_proj output x softmax_scale x 64^-0.5 x the q scale)
  seq_lens    [B] int32: compressed (c4) lengths, >= 1 (SGLang pads unused rows with 1)
  page_table  [B, max_pages] int32: physical pages scattered over the pool; entries past a row's
              pages hold page 0, the pool's padding page (it holds stale data, as in production)

Output `logits` [B, max_seq_len] fp32, max_seq_len = max_pages * 64 (SGLang's
`max_compressed_seq_len`): logits[b, t] = scale[t] * sum_h weights[b, h] * relu(q[b, h] . k[t]) for
t < seq_lens[b]. The tail t >= seq_lens[b] has no agreed value: SGLang calls every kernel with
clean_logits=False, the TileLang kernel and DeepGEMM leave it unwritten, `_torch` writes 0.0 and
`_torch_sm120` -inf. The oracle writes -inf (DeepGEMM's clean_logits convention, and what SGLang's own
unit test asks of both torch paths): with it, a top-k that is not told the lengths still picks only
valid tokens, whereas 0.0 outranks every negative logit (weights take both signs). Drift is measured
on t < seq_lens only, because that is all the top-k reads; `tail_not_neginf` counts the tail
positions that are not -inf, to show each path's convention, without a limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, case_maker, import_module

OP = "indexer_logits"
# FP8 q and k are exact in the oracle; what is left is the torch paths' bf16 bmm (each head's dot
# product rounded once to bf16, relative error <= 2^-9, before the relu and the fp32 weighted sum).
# Measured on the CPU: calc_diff 1e-6..2e-6 for both torch paths, under the bf16 ceiling of 1e-5.
DTYPE = "bf16"
PRIMARY = "logits"
OUTPUTS = {"logits": "float32"}  # fp32 on SM120 (index_logits_dtype: bf16 only on major 10)
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {
    # a logit's rounding error scales with its magnitude sum_h |w_h (q_h . k)| scale, the size of
    # the terms it sums, not with the logit, which can cancel to ~0 between heads of both signs:
    # rounding each head's dot product to bf16 bounds it by 2^-9 of that; 2^-8 leaves one more rounding
    "max_rel_err_magnitude": 2.0**-8,
    # for the same reason a short row (a padding row has one token) can drift by 1e-1 in calc_diff
    # with nothing wrong: max_rel_err_magnitude bounds every row's logits instead
    "worst_row_calc_diff": math.inf,
    # bf16 rounding swaps a few near-ties at the 512th place (measured >= 0.998 pooled, 0.996 worst row)
    "topk_recall": 0.99,
    "worst_row_topk_recall": 0.95,
}
HEADS, DIM, PAGE = 64, 128, 64
TOKEN_BYTES = DIM + 4
PAGE_BYTES = PAGE * TOKEN_BYTES
FP8_MAX = 448.0
TOPK = 512  # index_topk: what the logits are for
INDEXER = "srt/layers/attention/dsv4/indexer.py"


# ---------------------------------------------------------------------------------------------- cases


_case = case_maker(lengths="mixed", extra_pages=0)  # _case(name, tags, B=, max_len=, ...)


def cases() -> list[Case]:
    out = [
        _case("tiny_b3_mixed300", {"tiny"}, B=3, max_len=300),
        _case("tiny_b2_equal1024", {"tiny"}, B=2, max_len=1024, lengths="equal"),
        _case("tiny_b5_mixed130_widetable", {"tiny"}, B=5, max_len=130, extra_pages=2),
    ]
    # DeepSeek-V4-Flash decode: compressed lengths up to 16K (64K tokens of context); the index heads
    # are replicated, so TP does not change the shapes
    for b, max_len, lengths in (
        (1, 16384, "equal"),
        (1, 1000, "equal"),
        (8, 16384, "mixed"),
        (8, 4096, "equal"),
        (32, 16384, "mixed"),
        (32, 8192, "equal"),
        (128, 16384, "mixed"),
        (128, 2048, "equal"),
    ):
        out.append(_case(f"b{b}_{lengths}{max_len}", {"flash"}, B=b, max_len=max_len, lengths=lengths))
    out.append(_case("b32_mixed4096_widetable", {"flash"}, B=32, max_len=4096, extra_pages=16))
    return out


def lengths(case: Case) -> list[int]:
    """The compressed length of each row, fixed by the case (so cost() knows them). Mixed: spread
    quadratically up to max_len, most ending inside a page, in an interleaved order; from four rows
    on, the last is a padding row of length 1."""
    p = case.params
    B, L = p["B"], p["max_len"]
    if p["lengths"] == "equal" or B == 1:
        return [L] * B
    out = [max(1, round(L * ((b + 1) / B) ** 2) - (b * 13) % PAGE) for b in range(B)]
    out[-1] = L
    order = list(range(0, B, 2)) + list(range(1, B, 2))[::-1]
    out = [out[i] for i in order]
    if B >= 4:
        out[-1] = 1
    return out


# ---------------------------------------------------------------------------------------------- inputs


def fused_cache(k: torch.Tensor) -> torch.Tensor:
    """k [pages * 64, 128] float -> the fused uint8 cache [pages, 64, 1, 132]: per page the fp8 values
    of its 64 tokens, then their 64 fp32 scales, max(1e-4, amax) / 448 as SGLang's writer computes them
    in fp32 (fused_norm_rope_v2.cuh)."""
    n = k.shape[0]
    pages = n // PAGE
    amax = k.float().abs().amax(-1)
    scale = torch.clamp(amax, min=1e-4) / FP8_MAX
    k8 = (k.float() * (1.0 / scale)[:, None]).to(torch.float8_e4m3fn)
    buf = torch.empty(pages, PAGE_BYTES, dtype=torch.uint8)
    buf[:, : PAGE * DIM] = k8.view(torch.uint8).reshape(pages, PAGE * DIM)
    buf[:, PAGE * DIM :] = scale.float().view(torch.uint8).reshape(pages, PAGE * 4)
    return buf.view(pages, PAGE, 1, TOKEN_BYTES)


def dequantize(cache: torch.Tensor) -> torch.Tensor:
    """The exact K of every slot of a fused cache: [pages * 64, 128] float64."""
    flat = cache.reshape(cache.shape[0], PAGE_BYTES)
    k8 = flat[:, : PAGE * DIM].contiguous().view(torch.float8_e4m3fn).reshape(-1, DIM)
    scale = flat[:, PAGE * DIM :].contiguous().view(torch.float32).reshape(-1)
    return k8.double() * scale.double()[:, None]


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    B, lens = p["B"], lengths(case)
    row_pages = [math.ceil(n / PAGE) for n in lens]
    width = max(row_pages) + p["extra_pages"]
    num_pages = 1 + sum(row_pages) + max(1, B // 4)  # page 0 pads the tables; a few pages belong to no row
    # K after the indexer's Hadamard rotation is close to Gaussian; token magnitudes spread over
    # 2^-3..2^1 so the scales differ
    k = torch.randn(num_pages * PAGE, DIM, generator=gen)
    k *= torch.pow(2.0, torch.randint(-3, 2, (num_pages * PAGE, 1), generator=gen).float())
    page_table = torch.zeros(B, width, dtype=torch.int32)
    perm = (torch.randperm(num_pages - 1, generator=gen) + 1).to(torch.int32)
    start = 0
    for b, n in enumerate(row_pages):
        page_table[b, :n] = perm[start : start + n]
        start += n
    q = torch.randn(B, HEADS, DIM, generator=gen)
    q_scale = q.abs().amax(-1) / FP8_MAX  # per (token, head), folded into the weights
    q_fp8 = (q / q_scale[..., None]).to(torch.float8_e4m3fn).view(B, 1, HEADS, DIM)
    weights = torch.randn(B, HEADS, generator=gen) * (DIM**-0.5 * HEADS**-0.5) * q_scale
    return {
        "q_fp8": q_fp8,
        "kv_cache": fused_cache(k),
        "weights": weights.float(),
        "seq_lens": torch.tensor(lens, dtype=torch.int32),
        "page_table": page_table,
    }


def max_seq_len(t: dict) -> int:
    return t["page_table"].shape[1] * PAGE


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """Only t < seq_lens[b] is read by the top-k."""
    pos = torch.arange(max_seq_len(t))
    return {"logits": pos[None, :] < t["seq_lens"].long()[:, None]}


def cost(case: Case) -> tuple[float, float]:
    """Each valid token's 132 B read once, q (fp8), the weights, the page table, and the whole logits
    row written; 2 flops per (token, head, dim) for the dot products."""
    p = case.params
    tokens = sum(lengths(case))
    width = max(math.ceil(n / PAGE) for n in lengths(case)) + p["extra_pages"]
    nbytes = tokens * TOKEN_BYTES + p["B"] * (HEADS * DIM + HEADS * 4 + width * 4 + 4 + width * PAGE * 4)
    return float(nbytes), 2.0 * tokens * HEADS * DIM


# ---------------------------------------------------------------------------------------------- metrics


def metrics(outputs: dict, oracle: dict, inputs: dict, case: Case) -> list:
    """What the standard drift cannot say: each logit's error against its magnitude (what rounding
    scales with), the tail's convention, and what the drift costs the consumer (how many of
    the exact top-512 tokens the path's logits still select)."""
    logits, ref = outputs["logits"].double(), oracle["logits"].double()
    valid = valid_region(inputs, case)["logits"]
    err = ((logits - ref).abs() / oracle["logits_magnitude"].double()).nan_to_num(nan=math.inf, posinf=math.inf)
    err = torch.where(valid, err, 0.0)  # the tail is the convention metric's
    err = torch.where(valid & (logits == ref), 0.0, err)  # an exact match is no error, 0/0 included
    at = divmod(int(err.argmax()), err.shape[1])
    tail = logits[~valid]
    fills = {
        "neg_inf": int((tail == -math.inf).sum()),
        "zero": int((tail == 0).sum()),
        "nan": int(tail.isnan().sum()),
        "other": int((tail.isfinite() & (tail != 0)).sum() + (tail == math.inf).sum()),
    }
    recall, worst, worst_row = topk_recall(logits, ref, inputs["seq_lens"])
    return [
        Metric("max_rel_err_magnitude", float(err.max()), detail={"index": list(at)}),
        Metric("tail_not_neginf", float(tail.numel() - fills["neg_inf"]), unit="count", detail=fills),
        Metric("topk_recall", recall, better="higher", detail={"k": TOPK}),
        Metric("worst_row_topk_recall", worst, better="higher", detail={"k": TOPK, "row": worst_row}),
    ]


def topk_recall(logits: torch.Tensor, ref: torch.Tensor, seq_lens: torch.Tensor) -> tuple[float, float, int]:
    """Tie-aware recall of the top-512 chosen from `logits` against the exact top-512 of `ref`, over
    each row's valid positions: a chosen token counts when its exact logit reaches the exact k-th.
    Returns (pooled over rows, the worst row's, that row)."""
    hits, total, worst, worst_row = 0, 0, 1.0, 0
    for b, n in enumerate(seq_lens.tolist()):
        k = min(TOPK, n)
        row = logits[b, :n].nan_to_num(nan=-math.inf)
        exact = ref[b, :n]
        kth = exact.topk(k).values[-1]
        chosen = row.topk(k).indices
        h = int((exact[chosen] >= kth).sum())
        hits, total = hits + h, total + k
        if h / k < worst:
            worst, worst_row = h / k, b
    return (hits / total if total else 1.0), worst, worst_row


# ---------------------------------------------------------------------------------------------- paths


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition over the exactly dequantized cache; -inf past each row's length."""
    exact = dequantize(t["kv_cache"])
    q = t["q_fp8"][:, 0].double()  # [B, 64, 128]
    w = t["weights"].double()
    out = torch.full((q.shape[0], max_seq_len(t)), -math.inf, dtype=torch.float64, device=q.device)
    magnitude = torch.zeros_like(out)
    for b, n in enumerate(t["seq_lens"].tolist()):
        pages = t["page_table"][b, : math.ceil(n / PAGE)].long()
        slots = (pages[:, None] * PAGE + torch.arange(PAGE, device=pages.device)).reshape(-1)[:n]
        heads = exact[slots] @ q[b].T  # [n, 64]: each head's dot product, scale included
        out[b, :n] = torch.relu(heads) @ w[b]
        magnitude[b, :n] = heads.abs() @ w[b].abs()
    return {"logits": out, "logits_magnitude": magnitude}


def _sglang_call(fn: Callable, t: dict) -> dict[str, torch.Tensor]:
    """SGLang's call: positional, deep_gemm_metadata None (torch and TileLang ignore it), clean_logits False."""
    logits = fn(t["q_fp8"], t["kv_cache"], t["weights"], t["seq_lens"], t["page_table"], None, max_seq_len(t), False)
    return {"logits": logits}


def indexer_function(name: str) -> Callable:
    """A function of SGLang's dsv4 indexer module, imported as production imports it (in the worker:
    the module pulls ~700 modules of SGLang's serving stack)."""
    return getattr(import_module("sglang.srt.layers.attention.dsv4.indexer"), name)


def sglang_torch_sm120(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return _sglang_call(indexer_function("fp8_paged_mqa_logits_torch_sm120"), t)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return _sglang_call(indexer_function("fp8_paged_mqa_logits_torch"), t)


def sglang_tilelang(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.kernels.ops.attention.dsa.tilelang_kernel")  # Unavailable without tilelang
    return _sglang_call(mod.tilelang_fp8_paged_mqa_logits, t)


def deepgemm(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"logits": _deepgemm_call(t, case)()}


def _deepgemm_call(t: dict, case: Case) -> Callable[[], torch.Tensor]:
    """DeepGEMM's paged MQA logits as SGLang calls it: context_lens [B, 1] int32, the schedule from
    get_paged_mqa_logits_metadata(block_kv=64) made once (not timed). Upstream DeepGEMM renamed the op
    fp8_fp4_paged_mqa_logits (Q as (values, None) for FP8, no clean_logits: the tail is left unwritten),
    the same kernel on SM90."""
    from harness.parity.op import deepgemm as dg  # `deepgemm` here is this file's path

    deep_gemm = dg.load()
    context_lens = t["seq_lens"].to(torch.int32).view(-1, 1).contiguous()
    meta = deep_gemm.get_paged_mqa_logits_metadata(context_lens, PAGE, deep_gemm.get_num_sms())
    args = (t["kv_cache"], t["weights"], context_lens, t["page_table"], meta, max_seq_len(t))
    if hasattr(deep_gemm, "fp8_paged_mqa_logits"):
        return lambda: deep_gemm.fp8_paged_mqa_logits(t["q_fp8"], *args, False)
    return lambda: deep_gemm.fp8_fp4_paged_mqa_logits((t["q_fp8"], None), *args)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 over the exact dequantization; -inf past seq_len"),
    Path(
        "deepgemm",
        deepgemm,
        golden=True,
        needs_cuda=True,
        timed=_deepgemm_call,
        note="deep_gemm.fp8_paged_mqa_logits, clean_logits=False (tail unwritten)",
    ),
    Path("sglang.torch_sm120", sglang_torch_sm120, note="fp8_paged_mqa_logits_torch_sm120 (SM120's torch fallback)"),
    Path("sglang.torch", sglang_torch, note="fp8_paged_mqa_logits_torch (0.0 past seq_len)"),
    Path(
        "sglang.tilelang",
        sglang_tilelang,
        needs_cuda=True,
        note="tilelang_fp8_paged_mqa_logits, the SM120 default (SGLANG_OPT_USE_TILELANG_INDEXER)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsa.tilelang_kernel:tilelang_fp8_paged_mqa_logits": "decode, B <= 128 only",
}

# figures no limit judges, and why (the run page lists them)
UNJUDGED = {
    "worst_row_calc_diff": "a short row (a padding row has one token) drifts by 1e-1 in calc_diff with nothing wrong "
    "(its logits can cancel to ~0 between heads): max_rel_err_magnitude bounds every row's logits instead",
    "tail_not_neginf": "the tail t >= seq_lens has no agreed value (the module docstring): SGLang calls every "
    "kernel with clean_logits=False and its top-k reads t < seq_lens only; counted to show each path's convention",
}

"""DeepSeek-V4.1 prefill indexer top-k (ragged, top-k v2): per query row, the k best of its causal window of
compressed positions, written as request-local positions for the sparse MLA.

Call site: `srt/layers/attention/dsv4/v41_indexer/full_topk.py FullTopKIndexer._deep_gemm_prefill` ->
`v41_indexer/scoring.py:dense_prefill_topk(data, kv, out=inputs.out_raw_indices[:rows])`, which for every logits tile of
`score_tiles` (DeepGEMM `fp8_fp4_mqa_logits` through `flat_index_logits_tiles`) calls `topk_ragged(logits,
data.compress_lens[tile], out=out[tile], offsets=zeros)`; fp32 logits (SM120: `index_logits_dtype` is bf16 on major 10
only) go to `kernels/ops/attention/dsv4/topk.py:topk_transform_ragged_v2(logits, lens, out_offsets=offsets,
out_indices=out)`, the JIT `topk_v2.cuh` `TopKKernel::transform_ragged` (bf16 would take DeepSelect). SM120 reaches it
whenever `use_deep_gemm_prefill` (is_sm100_or_newer: major >= 10, and DeepGEMM has fp8_fp4_mqa_logits), although
SGLANG_OPT_USE_TOPK_V2 is forced off on SM120 for V4's decode. SGLang's torch prefill (`_torch_prefill`:
`chunk.scores.topk(k, sorted=False)` over scores masked to -inf past each row's length, then `write_prefill`) is
the reference: a CPU path here.

Inputs, in the production layout (one logits tile):
  logits  [R, W] fp32, W = the request's visible compressed length (a multiple of 4 here, as the kernel's
          16-byte loads need); row i holds scores for columns < lens[i]; past it whatever the logits kernel
          left there (stood in by large values, NaN and +inf: the kernel must not read them)
  lens    [R] int32, compress_lens = (pos + 1) // ratio (causal), >= 0 (a row that sees nothing has 0)
  offsets [R] int32 zeros (request-relative columns)
  out     [R, K] int32, K = index_topk (512 for V4.1-Flash; 1024 and 1152 as upstream's wider variants, assumed)
Output `indices` [R, K]: the chosen columns, unordered, -1 padded; a row of n <= K positions holds all of them.
The oracle is the exact top-k in float64 (ties to the lower column). Metrics (as kernels/topk_transform.py judges
v1, with K per case): tie-aware recall, score-mass recall, short-row, duplicate and out-of-range counts.
Rows 8K-16K of one prefill chunk at ratio 1 or 2 are the flash cases (lengths up to 16K).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, case_maker, import_module, sibling

OP = "topk_ragged_v2"
DTYPE = "fp32"
PRIMARY = None
OUTPUTS = {"indices": "int32"}
TOLERANCE = (0.0, 0.0)
CEILINGS = {
    "tie_recall": 1.0,
    "worst_row_tie_recall": 1.0,
    "score_mass_recall": 1.0 - 1e-9,
    "short_row_errors": 0.0,
    "duplicate_indices": 0.0,
    "out_of_range_indices": 0.0,
}
UNJUDGED = {
    "recall": "with ties at the k-th score, which of the equal scores is chosen is the kernel's business: "
    "tie_recall and score_mass_recall are judged instead",
}

_case = case_maker(scores="fp32", start=0)  # _case(name, tags, rows=, ratio=, k=, start=)


def cases() -> list[Case]:
    out = [
        # a chunk that starts at position 0: the first rows see fewer than k positions (short rows, 0 at the start)
        _case("tiny_r64_c1_k512", {"tiny"}, rows=64, ratio=1, k=512, start=500),
        _case("tiny_r48_c2_k1024_bf16ties", {"tiny"}, rows=48, ratio=2, k=1024, start=2000, scores="bf16"),
        _case("tiny_r40_c1_k1152_coarse", {"tiny"}, rows=40, ratio=1, k=1152, start=1130, scores="coarse"),
    ]
    for rows, ratio, start in ((8192, 1, 0), (8192, 2, 8192), (16384, 1, 0), (16384, 2, 0)):
        for k in (512, 1024, 1152):
            out.append(_case(f"r{rows}_c{ratio}_from{start}_k{k}", {"flash"}, rows=rows, ratio=ratio, k=k,
                             start=start))  # fmt: skip
    return out


def lengths(case: Case) -> list[int]:
    """Causal: row i is the token at position start + i, it sees (pos + 1) // ratio compressed positions."""
    p = case.params
    return [(p["start"] + i + 1) // p["ratio"] for i in range(p["rows"])]


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    lens = lengths(case)
    W = max(4, math.ceil(max(lens) / 4) * 4)
    scores = sibling(__file__, "topk_transform")._logit_like(p["rows"], W, gen)
    if p["scores"] == "bf16":
        scores = scores.bfloat16().float()
    elif p["scores"] == "coarse":
        scores = torch.round(scores * 4) / 4
    tail = torch.arange(W)[None, :] >= torch.tensor(lens)[:, None]
    junk = 100.0 + 1000.0 * torch.rand(p["rows"], W, generator=gen)
    pick = torch.rand(p["rows"], W, generator=gen)
    junk[pick < 0.05] = math.nan
    junk[pick > 0.95] = math.inf
    scores = torch.where(tail, junk, scores)
    return {"logits": scores.float().contiguous(), "lens": torch.tensor(lens, dtype=torch.int32)}


def cost(case: Case) -> tuple[float, float]:
    lens = lengths(case)
    return float(4 * sum(lens) + 4 * len(lens) * (2 + case.params["k"])), float(sum(lens))


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The exact top-k in float64, ties to the lower column; a row of at most k positions takes them all."""
    k = case.params["k"]
    scores = t["logits"]
    out = torch.full((scores.shape[0], k), -1, dtype=torch.int64, device=scores.device)
    for b, n in enumerate(t["lens"].tolist()):
        if n <= k:
            out[b, :n] = torch.arange(n, device=scores.device)
        else:
            out[b] = torch.sort(scores[b, :n].double(), descending=True, stable=True).indices[:k]
    return {"indices": out.to(torch.int32)}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """The chosen columns against the scores: recall of the exact set, tie-aware recall (a chosen column whose score
    equals the k-th counts), softmax-mass recall, and counts of short-row errors (a row of n <= k not holding
    exactly 0..n-1 plus -1), duplicates, and out-of-range values (>= the row's length, or negative but -1)."""
    K = case.params["k"]
    scores = inputs["logits"].cpu().double()
    got = outputs["indices"].cpu().long()
    exact = oracle_out["indices"].cpu().long()
    hits = tie_hits = total = short = dupes = oor = 0
    worst_tie, worst_row, worst_mass, mass_row = 1.0, 0, 1.0, 0
    for b, n in enumerate(inputs["lens"].cpu().tolist()):
        row = got[b]
        oor += int(((row >= n) | ((row < 0) & (row != -1))).sum())
        chosen = row[(row >= 0) & (row < n)]
        unique = torch.unique(chosen)
        dupes += chosen.numel() - unique.numel()
        if n == 0:
            short += int(not bool((row == -1).all()))
            continue
        k = min(K, n)
        vals = scores[b, :n]
        kth = torch.sort(vals, descending=True).values[k - 1]
        tie = int((vals[unique] >= kth).sum())
        tie_hits, total = tie_hits + tie, total + k
        hits += int(torch.isin(unique, exact[b, :k]).sum())
        if tie / k < worst_tie:
            worst_tie, worst_row = tie / k, b
        p = torch.exp(vals - vals.max())
        mass = float(p[unique].sum() / p[exact[b, :k]].sum())
        if mass < worst_mass:
            worst_mass, mass_row = mass, b
        if n <= K:
            ok = torch.equal(torch.sort(row[row >= 0]).values, torch.arange(n)) and int((row == -1).sum()) == K - n
            short += int(not ok)
    total = max(total, 1)
    return [
        Metric("recall", hits / total, better="higher", detail={"k": K}),
        Metric("tie_recall", tie_hits / total, better="higher", detail={"k": K}),
        Metric("worst_row_tie_recall", worst_tie, better="higher", detail={"row": worst_row}),
        Metric("score_mass_recall", worst_mass, better="higher", detail={"row": mass_row}),
        Metric("short_row_errors", float(short), unit="count"),
        Metric("duplicate_indices", float(dupes), unit="count"),
        Metric("out_of_range_indices", float(oor), unit="count"),
    ]


# ---------------------------------------------------------------------------------------------- paths


def _scoring():
    return import_module("sglang.srt.layers.attention.dsv4.v41_indexer.scoring")


def _out(t: dict, case: Case) -> torch.Tensor:
    # poisoned: a slot the kernel leaves unwritten shows as -2 (out of range)
    return torch.full((t["logits"].shape[0], case.params["k"]), -2, dtype=torch.int32, device=t["logits"].device)


def sglang_topk_ragged(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`scoring.topk_ragged` on one tile (fp32 logits -> `topk_transform_ragged_v2`); logits are written in place,
    so a copy."""
    out = _out(t, case)
    zeros = torch.zeros_like(t["lens"])
    _scoring().topk_ragged(t["logits"].clone(), t["lens"], out=out, offsets=zeros)
    return {"indices": out}


def sglang_dense_prefill(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`scoring.dense_prefill_topk` with `score_tiles` yielding the case's logits in two row tiles (the DeepGEMM
    logits are kernels/ops' business elsewhere): the per-tile slicing of out and lens as production does it."""
    from unittest import mock

    sc = _scoring()
    out = _out(t, case)
    R = t["logits"].shape[0]
    half = (R + 1) // 2
    tiles = [(slice(0, half), t["logits"][:half].clone()), (slice(half, R), t["logits"][half:].clone())]
    data = SimpleNamespace(request_starts=torch.zeros_like(t["lens"]), compress_lens=t["lens"])
    with mock.patch.object(sc, "score_tiles", lambda d, kv: iter(tiles)):
        sc.dense_prefill_topk(data, None, out=out)
    return {"indices": out}


def run_torch(t: dict, case: Case, select=None) -> dict[str, torch.Tensor]:
    """SGLang's torch prefill selection (`FullTopKIndexer._torch_prefill`): scores masked to -inf past each row's
    length (`_score_chunks`), `topk(min(k, lc), sorted=False)`, then `write_prefill` into out_raw_indices (-1 reset
    first, as `inputs.reset_outputs()` does). `select(scores, k)` replaces the top-k (tests/ops plant faults)."""
    sc = _scoring()
    K = case.params["k"]
    lens = t["lens"].long()
    lc = int(lens.max())
    out = torch.full((lens.shape[0], K), -1, dtype=torch.int32, device=lens.device)
    if lc == 0:
        return {"indices": out}
    j = torch.arange(lc, device=lens.device)
    scores = t["logits"][:, :lc].masked_fill(j[None, :] >= lens[:, None], -torch.inf)
    k = min(K, lc)
    idx = (select or (lambda s, k: s.topk(k, dim=-1, sorted=False).indices))(scores, k)
    inputs = SimpleNamespace(out_page_indices=None, out_raw_indices=out)
    request = SimpleNamespace(k=k, lc=lc, slots=j)
    chunk = SimpleNamespace(tok=torch.arange(lens.shape[0], device=lens.device), lens=lens, scores=scores)
    sc.write_prefill(inputs, request, chunk, idx)
    return {"indices": out}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="exact top-k of the scores in float64, ties to the lower column"),
    Path("sglang.jit_v2", sglang_topk_ragged, needs_cuda=True,
         note="topk_ragged -> topk_transform_ragged_v2 (JIT topk_v2.cuh, transform_ragged)"),
    Path("sglang.dense_prefill", sglang_dense_prefill, needs_cuda=True,
         note="dense_prefill_topk over two row tiles of the case's logits"),
    Path("sglang.torch", lambda t, case: run_torch(t, case),
         note="FullTopKIndexer._torch_prefill's selection: torch.topk + write_prefill"),
]  # fmt: skip

COVERS = {
    "sglang.srt.layers.attention.dsv4.v41_indexer.scoring:dense_prefill_topk": (
        "score_tiles replaced by the case's fp32 logits (the DeepGEMM fp8_fp4_mqa_logits tiles are not run)"
    ),
    "sglang.srt.layers.attention.dsv4.v41_indexer.scoring:topk_ragged": "fp32 logits (SM120's), not DeepSelect (bf16)",
    "sglang.kernels.ops.attention.dsv4.topk:topk_transform_ragged_v2": (
        "row_starts absent and zero offsets (production's call); k 512 / 1024 / 1152"
    ),
}

"""DeepSeek-V4 indexer top-k: the 512 best compressed tokens of each query row, written as pool slots
for the sparse MLA (the step after kernels/indexer_logits.py).

Call site: `srt/layers/attention/dsv4/indexer.py` (`run_topk_transform`) calls, by
`--dsa-topk-backend`: `topk_transform_paged` (sgl-kernel, the default; on SM120 it is the JIT CUDA
`topk_v1` kernel, `kernels/ops/attention/dsv4/topk.py`, as SGLANG_OPT_USE_TOPK_V2 is forced off
there) or `topk_transform_pytorch_vectorized` (`torch`). Both are
`fn(scores, seq_lens, page_tables, out_page_indices, page_size, out_raw_indices=None)` and write their
outputs in place.

Inputs, in the production layout:
  scores      [B, max_seq_len] fp32: the indexer logits, max_seq_len = max_pages * 64. Past a row's
              length they hold whatever the logits kernel left there (case param `tail`): -inf
              (`_torch_sm120`), 0.0 (`_torch`) or unwritten memory (TileLang, DeepGEMM with
              clean_logits=False), stood in for by large values, NaN and +inf
  seq_lens    [B] int32, the compressed lengths, >= 1
  page_tables [B, max_pages] int32: physical pages scattered over the pool, page 0 (the padding
              page) past each row's pages
  page_size   64; k = 512 (index_topk) is out_page_indices.shape[1]

Outputs: `page_indices` [B, 512] int32, each chosen position t written as
(page_tables[b, t >> 6] << 6) | (t & 63), -1 for an empty slot; `raw_indices` [B, 512] int32, the
positions t themselves. The sparse MLA reads the first min(seq_len, 512) slots of a row
(`c4_sparse_topk_lengths`) and skips -1: the order within a long row is free, but a row of at most
512 tokens must hold all of them in its first n slots and -1 after (both kernels write 0..n-1).

The oracle is the exact top-k of the scores in float64 (ties to the lower position). The outputs are
indices, so there is no drift to measure: metrics() decodes `page_indices` back to positions through
the page table (what the attention will read) and judges them against the scores: recall of the
exact set, tie-aware recall (a chosen token whose score equals the k-th counts: which of equal
scores is taken is the kernel's choice), score-mass recall, and counts of short-row, duplicate,
out-of-range and page/raw-disagreeing indices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from harness.parity.op import ORACLE, Case, Known, Metric, Path, case_maker, import_module

OP = "topk_transform"
# the scores are fp32 and the selection must be exact; no floating output is compared
DTYPE = "fp32"
PRIMARY = None
OUTPUTS = {"page_indices": "int32"}
TOLERANCE = (0.0, 0.0)
TOPK, PAGE = 512, 64
PAGE_BITS = PAGE.bit_length() - 1
CEILINGS = {
    # an exact top-k chooses only tokens that reach the k-th score: nothing less than all of them
    "tie_recall": 1.0,
    "worst_row_tie_recall": 1.0,
    # tie-equivalent choices have equal mass up to the order of a sum; one token missed costs ~1e-3
    # of a row's top-k mass in these cases
    "score_mass_recall": 1.0 - 1e-9,
    "short_row_errors": 0.0,
    "duplicate_indices": 0.0,
    "out_of_range_indices": 0.0,
    "raw_index_mismatch": 0.0,
    # plain `recall` has no floor: with ties at the k-th score (the bf16 and coarse cases) which of
    # them are chosen is the kernel's business
}


def _indexer_function(name: str):
    """A function of SGLang's dsv4 indexer module (imported in the worker, as production does)."""
    return getattr(import_module("sglang.srt.layers.attention.dsv4.indexer"), name)


# ---------------------------------------------------------------------------------------------- cases


_case = case_maker()  # _case(name, tags, B=, max_len=, lengths=, scores=, tail=)


def cases() -> list[Case]:
    out = [
        _case("tiny_b4_mixed2048_garbage", {"tiny"}, B=4, max_len=2048, lengths="mixed", scores="fp32", tail="garbage"),
        _case("tiny_b3_equal4096_bf16ties", {"tiny"}, B=3, max_len=4096, lengths="equal", scores="bf16", tail="neginf"),
        _case("tiny_b2_short300_zero", {"tiny"}, B=2, max_len=300, lengths="mixed", scores="fp32", tail="zero"),
        _case("tiny_b4_mixed1500_coarse", {"tiny"}, B=4, max_len=1500, lengths="mixed", scores="coarse", tail="zero"),
    ]
    for b, max_len, lengths, scores, tail in (
        (1, 16384, "equal", "fp32", "garbage"),
        (8, 16384, "mixed", "fp32", "garbage"),
        (8, 512, "mixed", "fp32", "neginf"),
        (8, 16384, "mixed", "bf16", "zero"),
        (32, 16384, "mixed", "bf16", "neginf"),
        (32, 8192, "equal", "coarse", "garbage"),
        (128, 16384, "mixed", "fp32", "garbage"),
        (128, 2048, "equal", "bf16", "zero"),
    ):
        name = f"b{b}_{lengths}{max_len}_{scores}_{tail}"
        out.append(_case(name, {"flash"}, B=b, max_len=max_len, lengths=lengths, scores=scores, tail=tail))
    return out


def lengths(case: Case) -> list[int]:
    """Fixed by the case: mixed rows spread quadratically up to max_len, mostly ending inside a page,
    and from two rows on some take the edges of the top-k: a short request (300), exactly k, k + 1,
    and a padding row of one token (at the odd rows, as many as half the batch holds)."""
    p = case.params
    B, L = p["B"], p["max_len"]
    if p["lengths"] == "equal" or B == 1:
        return [L] * B
    out = [max(1, round(L * ((b + 1) / B) ** 2) - (b * 13) % PAGE) for b in range(B)]
    out[-1] = L
    order = list(range(0, B, 2)) + list(range(1, B, 2))[::-1]
    out = [out[i] for i in order]
    if L > TOPK + 1:
        for i, n in enumerate((300, TOPK, TOPK + 1, 1)[: B // 2]):
            out[2 * i + 1] = n
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _logit_like(B: int, W: int, gen: torch.Generator) -> torch.Tensor:
    """Scores shaped like the indexer's: a weighted sum of a few relu'd Gaussians times a per-token
    power-of-two scale, of both signs, with a right tail of clear winners."""
    heads = 8
    z = torch.relu(torch.randn(B, W, heads, generator=gen))
    w = torch.randn(B, 1, heads, generator=gen) / math.sqrt(heads)
    scale = torch.pow(2.0, torch.randint(-1, 2, (B, W), generator=gen).float())
    return (z * w).sum(-1) * scale


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    B, lens = p["B"], lengths(case)
    row_pages = [math.ceil(n / PAGE) for n in lens]
    width = max(row_pages)
    W = width * PAGE
    scores = _logit_like(B, W, gen)
    if p["scores"] == "bf16":  # logits that went through bf16: ties of ~20 tokens at the 512th place
        scores = scores.bfloat16().float()
    elif p["scores"] == "coarse":  # a stress of ties: hundreds share the k-th value
        scores = torch.round(scores * 4) / 4
    tail = torch.arange(W)[None, :] >= torch.tensor(lens)[:, None]
    if p["tail"] == "neginf":
        scores[tail] = -math.inf
    elif p["tail"] == "zero":
        scores[tail] = 0.0
    else:  # unwritten memory: values that beat every real score, some NaN and +inf
        junk = 100.0 + 1000.0 * torch.rand(B, W, generator=gen)
        pick = torch.rand(B, W, generator=gen)
        junk[pick < 0.05] = math.nan
        junk[pick > 0.95] = math.inf
        scores = torch.where(tail, junk, scores)
    num_pages = 1 + sum(row_pages) + max(1, B // 4)
    page_table = torch.zeros(B, width, dtype=torch.int32)
    perm = (torch.randperm(num_pages - 1, generator=gen) + 1).to(torch.int32)
    start = 0
    for b, n in enumerate(row_pages):
        page_table[b, :n] = perm[start : start + n]
        start += n
    return {"scores": scores.float(), "seq_lens": torch.tensor(lens, dtype=torch.int32), "page_table": page_table}


def cost(case: Case) -> tuple[float, float]:
    """Each valid score read once, the chosen slots' page-table entries, both outputs written; one
    comparison per score."""
    lens = lengths(case)
    B = case.params["B"]
    nbytes = 4 * sum(lens) + 4 * B + 4 * sum(min(n, TOPK) for n in lens) + 2 * 4 * B * TOPK
    return float(nbytes), float(sum(lens))


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """The exact top-k in float64, ties to the lower position; a row of at most k tokens takes them
    all in order, -1 after."""
    scores, lens, table = t["scores"], t["seq_lens"].tolist(), t["page_table"]
    B = scores.shape[0]
    raw = torch.full((B, TOPK), -1, dtype=torch.int64, device=scores.device)
    for b, n in enumerate(lens):
        if n <= TOPK:
            raw[b, :n] = torch.arange(n, device=scores.device)
        else:
            order = torch.sort(scores[b, :n].double(), descending=True, stable=True).indices
            raw[b] = order[:TOPK]
    pages = torch.gather(table.long(), 1, (raw.clamp(min=0) >> PAGE_BITS))
    page_indices = torch.where(raw >= 0, (pages << PAGE_BITS) | (raw & (PAGE - 1)), -1)
    return {"page_indices": page_indices.to(torch.int32), "raw_indices": raw.to(torch.int32)}


# ---------------------------------------------------------------------------------------------- metrics


def metrics(outputs: dict, oracle: dict, inputs: dict, case: Case) -> list:
    """Judge the page indices (what the attention reads) through the page table, against the scores."""
    scores, table = inputs["scores"].double(), inputs["page_table"].long()
    page_indices = outputs["page_indices"].long()
    raw_out = outputs.get("raw_indices")
    exact = oracle["raw_indices"].long()
    hits = tie_hits = total = short_errors = dupes = out_of_range = raw_mismatch = 0
    worst_tie, worst_row, worst_mass, mass_row, masses = 1.0, 0, 1.0, 0, []
    for b, n in enumerate(inputs["seq_lens"].tolist()):
        k = min(TOPK, n)
        pos, state = decode_row(page_indices[b], table[b], n)  # state: 1 chosen, 0 empty, -1 out of range
        out_of_range += int((state < 0).sum())
        chosen = pos[state > 0]
        unique = torch.unique(chosen)
        dupes += chosen.numel() - unique.numel()
        row = scores[b, :n]
        kth = torch.sort(row, descending=True).values[k - 1]
        tie = int((row[unique] >= kth).sum())
        tie_hits, total = tie_hits + tie, total + k
        hits += int(torch.isin(unique, exact[b, :k]).sum())
        if tie / k < worst_tie:
            worst_tie, worst_row = tie / k, b
        # softmax mass of the chosen tokens over the exact top-k's (exp(-inf) and NaN -> 0)
        p = torch.exp(row - row.max()).nan_to_num(nan=0.0)
        mass = float(p[unique].sum() / p[exact[b, :k]].sum())
        masses.append(mass)
        if mass < worst_mass:
            worst_mass, mass_row = mass, b
        if n <= TOPK:
            ok = (state[:n] > 0).all() and torch.equal(torch.sort(pos[:n]).values, torch.arange(n))
            short_errors += int(not (ok and bool((page_indices[b, n:] == -1).all())))
        if raw_out is not None:
            want = torch.where(state > 0, pos, -1)
            raw_mismatch += int(((raw_out[b].long() != want) & (state >= 0)).sum())
    out = [
        Metric("recall", hits / total, better="higher", detail={"k": TOPK}),
        Metric("tie_recall", tie_hits / total, better="higher", detail={"k": TOPK}),
        Metric("worst_row_tie_recall", worst_tie, better="higher", detail={"row": worst_row}),
        Metric(
            "score_mass_recall",
            worst_mass,
            better="higher",
            detail={"row": mass_row, "mean": sum(masses) / len(masses), "of": "the worst row"},
        ),
        Metric("short_row_errors", float(short_errors), unit="count"),
        Metric("duplicate_indices", float(dupes), unit="count"),
        Metric("out_of_range_indices", float(out_of_range), unit="count"),
    ]
    if raw_out is not None:
        out.append(Metric("raw_index_mismatch", float(raw_mismatch), unit="count"))
    return out


def decode_row(page_indices: torch.Tensor, table: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot values -> (positions, state): state 1 where the value is a slot of one of the row's first
    ceil(n / 64) pages at a position < n, 0 where it is -1, -1 otherwise (a wrong page, a position
    past the length, a negative value other than -1)."""
    own = table[: math.ceil(n / PAGE)]
    phys = page_indices >> PAGE_BITS
    match = phys[:, None] == own[None, :]  # pages of a row are distinct
    logical = torch.where(match.any(1), match.float().argmax(1), -1)
    pos = logical * PAGE + (page_indices & (PAGE - 1))
    state = torch.where((page_indices >= 0) & (logical >= 0) & (pos < n), 1, -1)
    state = torch.where(page_indices == -1, 0, state)
    return torch.where(state > 0, pos, -1), state


# ---------------------------------------------------------------------------------------------- paths


def _launch(fn: Callable, t: dict) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """The in-place call on output buffers made once (what is timed), and those buffers."""
    B = t["scores"].shape[0]
    out = {
        "page_indices": torch.full((B, TOPK), -2, dtype=torch.int32, device=t["scores"].device),
        "raw_indices": torch.full((B, TOPK), -2, dtype=torch.int32, device=t["scores"].device),
    }

    def call() -> None:
        fn(t["scores"], t["seq_lens"], t["page_table"], out["page_indices"], PAGE, out["raw_indices"])

    return call, out


def _jit_v1(t: dict, case: Case):
    mod = import_module("sglang.kernels.ops.attention.dsv4.topk")
    return _launch(mod.topk_transform_paged, t)


def _torch(t: dict, case: Case):
    return _launch(_indexer_function("topk_transform_pytorch_vectorized"), t)


def _run(prepare: Callable) -> Callable[[dict, Case], dict[str, torch.Tensor]]:
    def run(t: dict, case: Case) -> dict[str, torch.Tensor]:
        call, out = prepare(t, case)
        call()
        return out

    return run


PATHS = [
    Path(ORACLE, oracle, golden=True, note="exact top-k of the scores in float64, ties to the lower position"),
    Path(
        "sglang.jit_v1",
        _run(_jit_v1),
        needs_cuda=True,
        timed=lambda t, case: _jit_v1(t, case)[0],
        note="topk_transform_paged: the JIT CUDA topk_v1 kernel (the SM120 default, 64 KB shared memory)",
    ),
    Path(
        "sglang.torch",
        _run(_torch),
        timed=lambda t, case: _torch(t, case)[0],
        note="topk_transform_pytorch_vectorized (--dsa-topk-backend torch)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
# seen on an H100 (topk_v1 built for SM90), 3 and 5 launches back to back on the same inputs: every launch
# writes a row's indices in another order (the same set where the scores have no ties), and where scores tie
# across the k-th place (bf16 scores, exact zeros) another set; each launch alone passes the recall metrics
KNOWN = [
    Known(
        "sglang.jit_v1", "*", "nondeterministic", "2027-03-31",
        "topk_transform_paged (topk_v1.cuh) is not bitwise repeatable: the order of a row's indices changes "
        "between launches, and so does the set where scores tie at the k-th place",
    ),
]  # fmt: skip


COVERS = {
    "sglang.kernels.ops.attention.dsv4.topk:topk_transform_paged": "width 512 only (topk_v1 takes up to 1024)",
}

UNJUDGED = {
    "recall": "with ties at the k-th score, which of the equal scores is chosen is the kernel's business: "
    "tie_recall and score_mass_recall are judged instead",
}

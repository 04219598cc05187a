"""DeepSeek-V4.1 Engram, first half: the n-gram hash ids each Engram layer looks its table rows up with.

For token t of a request, shift s = 0..N-1 is its s-th predecessor in the request's sequence (shift 0
the token itself). The request's sequence, as this forward sees it, is its history row (the N - 1
tokens before this forward, oldest first, left-padded with 0) followed by its tokens of this forward.

    tok[t, s]     = seq[-1 - s]      (a multimodal pad id, >= MM_PAD_SHIFT_VALUE, reads as image_token_id)
    blocked[t, s] = pos[t] < s, or (with vision) a shift <= s is the image token; a padding token
                    (t >= num_real) is blocked everywhere and its tok is 0
    comp[t, s]    = pad_id if blocked else token_map[tok[t, s]]
    h_n           = XOR_{s < n} comp[t, s] * mult[l, s]                   (n = 2..N: the n-gram's hash)
    hash_ids[t, l, (n-2) H + j] = h_n % primes[l, n-2, j] + offsets[l, (n-2) H + j]

with int64 arithmetic that never overflows: SGLang bounds every multiplier below
(2^63 - 1) // compressed_vocab (compute_hash_multipliers), so each product and the XOR stay in
[0, 2^63). The oracle computes that in int64 (exact by that bound, asserted) from the sequence
definition above, not from the kernel's history-column formula.

Call site: `srt/models/deepseek_v4.py DeepseekV4Model` (the forward's pre-layer part) calls
`self.engram_hasher(input_ids, forward_batch)`, `srt/layers/engram.py:EngramHasher.forward`, once per
forward for both Engram layers. Where `_cuda_kernels(input_ids)` (CUDA, so SM120) it calls the Triton
`kernels/ops/embeddings/engram_hash.py`: a decode batch `engram_hash_ids_and_commit` (the hash kernel
with COMMIT: history[req_slots[t]] advanced in place, rows with out_cache_loc 0 left alone), target
verify and extend `engram_hash_ids` (MODE_VERIFY / MODE_EXTEND), after which the forward commits each
extend request's last window into the history itself. `SGLANG_OPT_ENGRAM_EXTEND_HASH` (default off)
would send extend to `engram_hash_extend_and_commit` instead: not the default, not run here. Elsewhere
the forward takes `_torch_hash_ids` + `compute_engram_hash_ids`: SGLang's torch reference.

Paths: `sglang.triton` calls `engram_hash_ids` as the forward does (decode too: MODE_DECODE with
req_slots is the same kernel without the commit); `sglang.hasher` runs `EngramHasher.forward` on an
instance built without a tokenizer (the token map is an input) and a stand-in ForwardBatch, with
`_cuda_kernels` answered True under Triton's interpreter (the SM120 branch, as on a GPU);
`sglang.torch` runs the same forward with `_cuda_kernels` False (the torch fallback).

Inputs, in the production layout (V4.1-Flash's Engram config is not in SGLang's sources; these are the
published text_config's values, ASSUMED here: engram_layer_ids [1, 14], engram_max_ngram_size N = 4,
engram_n_heads H = 8, engram_vocab_size 16000000, engram_compressed_vocab_size 99092,
engram_pad_token_id 2; tokenizer vocabulary 129280, assumed from V4):
  input_ids [T] int64, positions [T] int64, history [slots + 1, N - 1] int32 (the last row the
  padding row), req_slots [bs] int64, out_cache_loc [T] int64 (0 on CUDA-graph padding rows)
  extend: extend_seq_lens [bs] int32, extend_start_loc [bs] int32; verify: draft_token_num per request
  token_map [vocab] int64 (token id -> compressed id; here drawn at random, SGLang builds it from the
  tokenizer's normalizers), multipliers [2, N] int64 (SGLang's recipe: numpy PCG64 seeded 10007 * layer),
  primes [2, N - 1, H] int64 and offsets [2, (N - 1) H] int64 (EngramLayout.from_config's recipe)
Outputs: `hash_ids` [T, 2, 24] int64; `tokens` [T, N] int32 (the predecessor table the extend commit reads;
engram_hash_ids only) and `history` [slots + 1, N - 1] int32 after the forward's commit (the hasher paths;
the padding row is not compared: the torch fallback writes padded rows there, the Triton commit skips them).

Boundaries the tiny cases sit on: tokens not a multiple of the kernel's 32-token block (33, 37 + 3
padding), windows at sequence starts (positions 0, 1, 2 in decode, verify blocks and fresh or 1-token
prefixes in extend), a zero-length extend request (adjacent starts), scheduler-supplied history rows,
image tokens and multimodal pad ids in the batch and in the history (clamped to MM_PAD_SHIFT_VALUE), and
a token chosen so that its 4-gram lands on the last row of layer 1's table (num_embeddings - 1) and one
whose 2-gram lands on row 0. The tiny layout keeps N, H and 2 layers, with buckets from 61 and a
compressed vocabulary of 2000, so the multipliers and products still span the int64 range.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch

from harness.parity.op import (
    ORACLE,
    Case,
    Metric,
    Path,
    case_maker,
    guarded_allocations,
    import_module,
    interpreted,
    load_by_path,
)

OP = "engram_hash"
# integer outputs, judged exactly by metrics() (ceiling 0); DTYPE only names the engine's defaults
DTYPE = "fp32"
PRIMARY = None
OUTPUTS = {"hash_ids": "int64"}
TOLERANCE = (0.0, 0.0)
CEILINGS = {"hash_ids_mismatch": 0.0, "tokens_mismatch": 0.0, "history_mismatch": 0.0}

LAYER_IDS = (1, 14)
N = 4  # engram_max_ngram_size
H = 8  # engram_n_heads
COLS = (N - 1) * H  # hash columns per layer
PAD_TOKEN = 2  # engram_pad_token_id
MM_PAD_SHIFT_VALUE = 1_000_000  # srt/managers/schedule_batch.py
BLOCK_T = 32  # engram_hash_ids' default block_t: tokens per program
HASH_PY = "kernels/ops/embeddings/engram_hash.py"
FLASH = dict(vocab=129280, compressed=99092, bucket=16_000_000)
TINY = dict(vocab=2048, compressed=2000, bucket=61)

_case = case_maker(pad_rows=0, image=False, sched_hist=False, block=1, **FLASH)


def cases() -> list[Case]:
    out = [
        _case("tiny_decode_b6", {"tiny"}, mode="decode", bs=6, **TINY),
        # 31 requests + 2 CUDA-graph padding rows: 33 tokens, one past the 32-token block
        _case("tiny_decode_b31_pad2", {"tiny"}, mode="decode", bs=31, pad_rows=2, **TINY),
        _case("tiny_decode_b5_image", {"tiny"}, mode="decode", bs=5, image=True, **TINY),
        _case("tiny_verify_b3x4", {"tiny"}, mode="verify", bs=3, block=4, **TINY),
        # a zero-length request between two others; 37 real tokens + 3 padding
        _case("tiny_extend_4req_pad3", {"tiny"}, mode="extend", lens=(5, 0, 30, 2), pad_rows=3, **TINY),
        _case("tiny_extend_sched_hist", {"tiny"}, mode="extend", lens=(3, 6), sched_hist=True, **TINY),
        _case("tiny_extend_image", {"tiny"}, mode="extend", lens=(12, 9), image=True, **TINY),
    ]
    # every rank hashes every token of the batch: the shapes do not depend on TP
    for b in (1, 8, 64, 256):
        out.append(_case(f"b{b}_decode", {"flash"}, mode="decode", bs=b))
    for b in (8, 64):  # MTP: 3 draft tokens + the anchor per request (assumed)
        out.append(_case(f"b{b}x4_verify", {"flash"}, mode="verify", bs=b, block=4))
    out.append(_case("t1024_extend", {"flash"}, mode="extend", lens=(1024,)))
    out.append(_case("t8192_extend", {"flash"}, mode="extend", lens=(2048, 2048, 2048, 2048)))
    return out


# ---------------------------------------------------------------------------------------------- layout


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


@functools.cache
def layout_primes(bucket: int, layers: int = len(LAYER_IDS)) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """[layer][n-gram size][head]: EngramLayout.from_config's recipe, drawn in (layer, n-gram size, head)
    order from one ascending sequence that restarts above `bucket - 1` for each n-gram size and skips
    the primes already taken."""
    seen: set[int] = set()
    out = []
    for _ in range(layers):
        per_ngram = []
        for _ in range(N - 1):
            sizes, current = [], bucket - 1
            for _ in range(H):
                current += 1
                while not _is_prime(current) or current in seen:
                    current += 1
                seen.add(current)
                sizes.append(current)
            per_ngram.append(tuple(sizes))
        out.append(tuple(per_ngram))
    return tuple(out)


def column_bounds(bucket: int, layer: int = 0) -> tuple[int, ...]:
    """Prefix sums of one layer's column segments: hash column c owns rows [b[c], b[c + 1])."""
    bounds = [0]
    for per_ngram in layout_primes(bucket)[layer]:
        for prime in per_ngram:
            bounds.append(bounds[-1] + prime)
    return tuple(bounds)


def multipliers(compressed: int) -> torch.Tensor:
    """compute_hash_multipliers' recipe: one odd multiplier per (layer, shift) below (2^63-1) // compressed."""
    bound = max(1, (np.iinfo(np.int64).max // compressed) // 2)
    rows = [
        np.random.default_rng(10007 * lid).integers(0, bound, size=(N,), dtype=np.int64) * 2 + 1 for lid in LAYER_IDS
    ]
    return torch.tensor(np.stack(rows))


# ---------------------------------------------------------------------------------------------- inputs


def _requests(case: Case) -> tuple[list[int], int]:
    """Tokens per request of this forward, and the padding tokens after them."""
    p = case.params
    if p["mode"] == "decode":
        return [1] * p["bs"], p["pad_rows"]
    if p["mode"] == "verify":
        return [p["block"]] * p["bs"], 0
    return list(p["lens"]), p["pad_rows"]


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    V, C = p["vocab"], p["compressed"]
    lens, pads = _requests(case)
    bs, real = len(lens), sum(lens)
    decode = p["mode"] == "decode"
    T = real + pads
    slots = bs + pads + 2 if decode else bs + 2  # some slots belong to no request of this batch
    pad_row = slots
    image_id = V - 1 if p["image"] else None

    token_map = torch.randint(0, C, (V,), generator=gen)

    def draw(n: int) -> torch.Tensor:  # token ids, never the image token unless placed on purpose
        return torch.randint(0, V - 1, (n,), generator=gen)

    # prefixes: sequence starts (0, 1, 2), a fresh chunk, long prefixes
    prefix = torch.randint(3, 5000, (bs,), generator=gen)
    starts_at = {"decode": [0, 1, 2, 3], "verify": [1, 2], "extend": [1, 0, 2]}[p["mode"]]
    for r, v in enumerate(starts_at[: bs - 1]):  # the last request keeps a long prefix
        prefix[r] = v
    if p["mode"] == "extend" and bs == 1:
        prefix[0] = 0  # a fresh prompt
    history = torch.randint(0, V - 1, (slots + 1, N - 1), generator=gen).to(torch.int32)
    perm = torch.randperm(slots, generator=gen)
    req_slots = perm[:bs].clone()
    for r in range(bs):  # history_row: left-padded with 0 where the prefix is shorter than N - 1
        short = N - 1 - min(int(prefix[r]), N - 1)
        history[req_slots[r], :short] = 0
    input_ids = draw(T)
    positions = torch.zeros(T, dtype=torch.int64)
    out_cache_loc = torch.arange(1, T + 1, dtype=torch.int64)
    start = 0
    for r, n in enumerate(lens):
        positions[start : start + n] = prefix[r] + torch.arange(n)
        start += n
    input_ids[real:], out_cache_loc[real:] = 0, 0  # padding tokens
    if decode and pads:
        req_slots = torch.cat([req_slots, torch.full((pads,), pad_row, dtype=torch.int64)])
    if p["image"]:
        # image tokens and multimodal pad ids in the batch, and the clamped pad id in a history row
        for k, t in enumerate(range(1, real, 4)):
            input_ids[t] = image_id if k % 2 else MM_PAD_SHIFT_VALUE + 7 * k
        history[req_slots[-1], -1] = MM_PAD_SHIFT_VALUE
    ext = {}
    if not decode:
        ls = torch.tensor(lens, dtype=torch.int32)
        ext = {"extend_seq_lens": ls, "extend_start_loc": (torch.cumsum(ls, 0) - ls).to(torch.int32)}
    t = {
        "input_ids": input_ids,
        "positions": positions,
        "history": history,
        "req_slots": req_slots,
        "out_cache_loc": out_cache_loc,
        "token_map": token_map,
        "multipliers": multipliers(C),
        "primes": torch.tensor(layout_primes(p["bucket"])),
        "offsets": torch.tensor([list(column_bounds(p["bucket"], i)[:-1]) for i in range(len(LAYER_IDS))]),
        **ext,
    }
    _place_table_edges(t, case)
    return t


def _last_tokens(case: Case) -> list[int]:
    """The last token of each non-empty request: changing it changes no other token's window."""
    lens, _ = _requests(case)
    ends = np.cumsum(lens)
    return [int(e) - 1 for e, n in zip(ends, lens) if n > 0]


def _place_table_edges(t: dict, case: Case) -> None:
    """Give one token the id whose 4-gram (layer 1, last column) hashes to the table's last row, and
    another the id whose 2-gram (first column) hashes to row 0, where the vocabulary has one; only
    tokens with a full, unblocked window and nothing after them in their request."""
    p = case.params
    bounds = column_bounds(p["bucket"], 0)
    targets = [(COLS - 1, bounds[-1] - 1), (0, 0)]
    win, blocked = _windows(t, case)
    for tok_index in _last_tokens(case)[::-1]:
        if not targets:
            return
        if int(t["positions"][tok_index]) < N - 1 or bool(blocked[tok_index].any()):
            continue
        col, want = targets[0]
        cand = win[tok_index].repeat(p["vocab"] - 1, 1)
        cand[:, 0] = torch.arange(p["vocab"] - 1)  # every token id but the image one
        ids = hash_f(t["token_map"][cand], torch.zeros_like(cand, dtype=torch.bool), t, pad_id(t))
        hit = (ids[:, 0, col] == want).nonzero()
        if hit.numel():
            t["input_ids"][tok_index] = int(hit[0, 0])
            targets.pop(0)


# ---------------------------------------------------------------------------------------------- oracle


def pad_id(t: dict) -> int:
    """EngramHasher: `self.pad_id = token_map[engram_pad_token_id]`."""
    return int(t["token_map"][PAD_TOKEN])


def _windows(t: dict, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(tok [T, N] int64 with multimodal pads read as the image token, blocked [T, N]) from the request
    sequences: history row, then this forward's tokens."""
    p = case.params
    lens, pads = _requests(case)
    image_id = p["vocab"] - 1 if p["image"] else None
    ids, pos = t["input_ids"].tolist(), t["positions"].tolist()
    hist, slots = t["history"].tolist(), t["req_slots"].tolist()
    T = len(ids)
    tok = torch.zeros(T, N, dtype=torch.int64)
    blocked = torch.ones(T, N, dtype=torch.bool)
    start = 0
    for r, n in enumerate(lens):
        for off in range(n):
            seq = hist[slots[r]] + ids[max(start, start + off + 1 - N) : start + off + 1]
            row = [seq[-1 - s] for s in range(N)]
            if image_id is not None:
                row = [image_id if v >= MM_PAD_SHIFT_VALUE else v for v in row]
            bl, hit = [], False
            for s in range(N):
                hit = hit or pos[start + off] < s or (image_id is not None and row[s] == image_id)
                bl.append(hit)
            tok[start + off] = torch.tensor(row)
            blocked[start + off] = torch.tensor(bl)
        start += n
    if p["mode"] == "decode":  # CUDA-graph padding rows are hashed as tokens of their (padding) slot
        for k in range(pads):
            i = start + k
            row = [(hist[slots[i]] + [ids[i]])[-1 - s] for s in range(N)]
            tok[i] = torch.tensor(row)
            blocked[i] = torch.tensor([pos[i] < s for s in range(N)])
    return tok, blocked


def hash_f(comp_tok: torch.Tensor, blocked: torch.Tensor, t: dict, pad: int) -> torch.Tensor:
    """comp_tok [M, N] compressed ids -> hash ids [M, L, COLS], from the definition (int64, exact)."""
    mult = t["multipliers"].long()
    assert int(t["token_map"].max()) * int(mult.max()) < 2**63, "a product would overflow int64"
    comp = torch.where(blocked, pad, comp_tok.long())
    prod = comp[:, None, :] * mult[None]  # [M, L, N]
    out = []
    for n in range(2, N + 1):
        h = prod[..., 0]
        for s in range(1, n):
            h = h ^ prod[..., s]
        out.append(h[..., None] % t["primes"][:, n - 2][None] + t["offsets"][:, (n - 2) * H : (n - 1) * H][None])
    return torch.cat(out, -1)


def _history_after(t: dict, case: Case, tok: torch.Tensor) -> torch.Tensor:
    """The history once the forward committed: each live request's slot holds its last token and the
    N - 2 before it, oldest first (decode and extend; target verify commits after acceptance, elsewhere)."""
    hist = t["history"].clone()
    if case.params["mode"] == "verify":
        return hist
    lens, _ = _requests(case)
    loc, slots = t["out_cache_loc"], t["req_slots"]
    start = 0
    for r, n in enumerate(lens):
        last = start + n - 1
        if n > 0 and int(loc[last]) != 0:
            hist[slots[r]] = tok[last, : N - 1].flip(0).to(torch.int32)
        start += n
    return hist


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    t = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in t.items()}  # the windows are built on the CPU
    tok, blocked = _windows(t, case)
    ids = hash_f(t["token_map"][tok], blocked, t, pad_id(t))
    return {"hash_ids": ids, "tokens": tok.to(torch.int32), "history": _history_after(t, case, tok)}


def _exact(name: str, got: torch.Tensor, want: torch.Tensor) -> Metric:
    """Elements that differ from the oracle's (ids_mismatch's exactness, for any shape), with the first."""
    got, want = got.to("cpu").long(), want.to("cpu").long()
    if got.shape != want.shape:
        raise ValueError(f"{name} shape {tuple(got.shape)} is not the oracle's {tuple(want.shape)}")
    wrong = got != want
    first = wrong.nonzero()[0].tolist() if bool(wrong.any()) else None
    detail = {
        "rows": int(wrong.flatten(1).any(1).sum()) if got.dim() > 1 else int(wrong.sum()),
        "first": first,
        "got": int(got[tuple(first)]) if first else None,
        "want": int(want[tuple(first)]) if first else None,
    }
    return Metric(f"{name}_mismatch", float(wrong.sum()), unit="count", detail=detail)


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`hash_ids_mismatch` (every path), `tokens_mismatch` (engram_hash_ids' predecessor table) and
    `history_mismatch` (the hasher's commit, the padding row left out): counts, ceiling 0."""
    out = [_exact("hash_ids", outputs["hash_ids"], oracle_out["hash_ids"])]
    if "tokens" in outputs:
        out.append(_exact("tokens", outputs["tokens"], oracle_out["tokens"]))
    if "history" in outputs:
        out.append(_exact("history", outputs["history"][:-1], oracle_out["history"][:-1]))
    return out


def cost(case: Case) -> tuple[float, float]:
    """Per token: its N predecessors (ids, history), N token-map reads, the hash ids written; per layer
    N multiplies, 6 XORs and 24 modulos."""
    T = sum(_requests(case)[0]) + _requests(case)[1]
    L = len(LAYER_IDS)
    return float(T * (N * 8 * 3 + L * COLS * 8)), float(T * L * (N + 6 + 2 * COLS))


# ---------------------------------------------------------------------------------------------- paths


def _row_and_starts(t: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """EngramHasher.forward's extend arguments: each token's request, the request starts, num_real."""
    lens = t["extend_seq_lens"].long()
    row = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
    return row, t["extend_start_loc"].long(), int(row.shape[0])


def sglang_triton(t: dict, case: Case, module=None) -> dict[str, torch.Tensor]:
    """`engram_hash_ids` with the forward's arguments per mode; `module` is an edited copy of the
    kernel file (tests/ops/planted_engram_hash.py)."""
    mod = module or load_by_path(HASH_PY)
    p = case.params
    kw = dict(
        token_map=t["token_map"], multipliers=t["multipliers"], primes=t["primes"], offsets=t["offsets"],
        pad_id=pad_id(t), image_token_id=p["vocab"] - 1 if p["image"] else None, mm_pad_shift=MM_PAD_SHIFT_VALUE,
    )  # fmt: skip
    history, slots = t["history"], t["req_slots"]
    if p["mode"] == "decode":
        kw.update(mode=mod.MODE_DECODE, history=history, req_slots=slots)
    elif p["mode"] == "verify":
        kw.update(mode=mod.MODE_VERIFY, history=history, req_slots=slots, block=p["block"])
    else:
        row, starts, num_real = _row_and_starts(t)
        if p["sched_hist"]:  # the scheduler's rows, indexed by request rather than by slot
            kw.update(history=history[slots].contiguous(), req_slots=None)
        else:
            kw.update(history=history, req_slots=slots)
        kw.update(mode=mod.MODE_EXTEND, row=row, starts=starts, num_real=num_real)
    with guarded_allocations(mod) as allocs:
        ids, tokens = mod.engram_hash_ids(t["input_ids"], t["positions"], **kw)
    return {"hash_ids": ids, "tokens": tokens, **allocs.result()}


def _hasher(t: dict, case: Case):
    """An EngramHasher built without a tokenizer (its __init__ builds the token map from one): the
    buffers and fields its forward reads, set as __init__ and init_history set them."""
    eng = import_module("sglang.srt.layers.engram")
    h = eng.EngramHasher.__new__(eng.EngramHasher)
    torch.nn.Module.__init__(h)
    h.max_ngram_size = N
    for name in ("token_map", "multipliers", "primes", "offsets"):
        h.register_buffer(name, t[name], persistent=False)
    h.pad_id = pad_id(t)
    h.image_token_id = case.params["vocab"] - 1 if case.params["image"] else None
    h.history = t["history"].clone()
    h.pad_row = h.history.shape[0] - 1
    h._cpu_hash_params = None
    return eng, h


def _forward_batch(t: dict, case: Case) -> SimpleNamespace:
    """The ForwardBatch fields EngramHasher.forward reads."""
    fbi = import_module("sglang.srt.model_executor.forward_batch_info")
    p = case.params
    mode = {"decode": "DECODE", "verify": "TARGET_VERIFY", "extend": "EXTEND"}[p["mode"]]
    fb = SimpleNamespace(
        forward_mode=getattr(fbi.ForwardMode, mode),
        positions=t["positions"],
        req_pool_indices=t["req_slots"],
        out_cache_loc=t["out_cache_loc"],
        engram_history=None,
        extend_seq_lens=t.get("extend_seq_lens"),
        extend_start_loc=t.get("extend_start_loc"),
        extend_seq_lens_cpu=t["extend_seq_lens"].tolist() if "extend_seq_lens" in t else None,
        spec_info=SimpleNamespace(draft_token_num=p["block"]),
    )
    if p["sched_hist"]:
        fb.engram_history = t["history"][t["req_slots"]].contiguous()
    return fb


def _hasher_forward(t: dict, case: Case, cuda_kernels: bool | None) -> dict[str, torch.Tensor]:
    eng, h = _hasher(t, case)
    fb = _forward_batch(t, case)
    kernels = import_module("sglang.kernels.ops.embeddings.engram_hash")
    answer = (lambda x: cuda_kernels) if cuda_kernels is not None else eng._cuda_kernels
    with mock.patch.object(eng, "_cuda_kernels", answer), guarded_allocations(kernels) as allocs:
        ids = h(t["input_ids"], fb)
    return {"hash_ids": ids, "history": h.history, **allocs.result()}


def sglang_hasher(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """EngramHasher.forward down its CUDA branch: `_cuda_kernels` is True on an SM120 GPU; under the
    interpreter it is answered True so that the same Triton calls run."""
    return _hasher_forward(t, case, True if interpreted() else None)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """EngramHasher.forward down its non-CUDA branch: `_torch_hash_ids` + `compute_engram_hash_ids`."""
    return _hasher_forward(t, case, False)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="int64 from the sequence definition (exact: products stay below 2^63)"),
    Path("sglang.triton", sglang_triton, note="kernels/ops/embeddings/engram_hash.py engram_hash_ids, by file path"),
    Path(
        "sglang.hasher",
        sglang_hasher,
        note="EngramHasher.forward, CUDA branch (engram_hash_ids_and_commit for decode, engram_hash_ids + commit)",
    ),
    Path("sglang.torch", sglang_torch, note="EngramHasher.forward, torch fallback (_torch_hash_ids)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.embeddings.engram_hash:engram_hash_ids": "",
    "sglang.srt.layers.engram:EngramHasher.forward": (
        "the idle / empty batch, SGLANG_OPT_ENGRAM_EXTEND_HASH (engram_hash_extend_and_commit), context parallel"
    ),
}

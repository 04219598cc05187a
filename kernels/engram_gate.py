"""DeepSeek-V4.1 Engram, second half: the table lookup of the hash ids and the fused gate that adds the
looked-up memory to the residual streams. One op file for both because they are the two Triton kernels
of one Engram layer (`srt/layers/engram.py:Engram.forward`); the wkv FP8 GEMM between them is the generic
FP8 linear's (inventory rows 12 / 28), so the gate's `kv` is an input of its own here, not wkv(rows).

    rows[t, c, :] = e4m3(W[id]) * 2^(e8m0(S[id, k]) - 127) per 32-wide block k   if row_lo <= id < row_hi
                  = 0                                                              otherwise (another rank's)
    for each stream m:  key = kv[t, m D : (m+1) D],  value = kv[t, 4 D : 5 D]
      rstd = rsqrt(mean(x^2) + eps) * rsqrt(mean(key^2) + eps)
      dot  = sum(x * q_weight[m] * k_weight[m] * key) * rstd / sqrt(D)
      gate = sigmoid(sign(dot) * sqrt(max(|dot|, clamp)))
      y[t, m] = x[t, m] + gate * value        (y = x on a row whose input id is the image token)

Call site: `DeepseekV4Model` calls `engram(state.residual, hash_ids[:, layer_hash_index], forward_batch,
input_ids=...)` on its Engram layers (V4.1-Flash: layers 1 and 14). `Engram.forward` looks the rows up
with `EngramEmbedding.forward` (`embed_rows`), runs wkv, then `engram_gate`.
  - lookup: with the table on the device (the default), `_lookup` -> `_owned_rows`, which on CUDA calls
    the Triton `kernels/ops/embeddings/engram_gather.py:engram_gather(weight_ptr, scale_ptr, ids, out,
    256, 32, row_lo=row_start, row_hi=row_start + rows, sort_ids=False)` and all-reduces over TP (each row
    owned by one rank: shard_range splits on whole hash columns, 24 of them divide by 1, 2, 4, 8). With
    SGLANG_ENABLE_DSV41_ENGRAM_HOST_TABLE (layout "shared") `forward` calls `engram_gather` over the whole
    host table with `sort_ids = _sorted_host_reads(...)`, True on a GPU without ATS such as the RTX PRO
    6000 (case `table = "host_shared"`). A table of 384M rows x 264 B per layer does not fit one RTX PRO
    6000, so TP1 runs the host table. Peer shards (SGLANG_OPT_DSV41_ENGRAM_PEER_SHARDS) and the staged
    rows are other kernels (engram_gather_peer) or other call sites, not run here.
  - gate: `engram_gate` calls the Triton `kernels/ops/embeddings/engram_gate.py:fused_engram_gate` when
    `_cuda_kernels(x)` and x, kv, q_weight, k_weight are bf16/fp32, contiguous, kv of x's dtype: SM120's
    branch; otherwise its fp32 torch body, SGLang's reference.

Paths: `sglang.triton` calls engram_gather and fused_engram_gate with the call sites' arguments;
`sglang.layer` runs EngramEmbedding.forward on an instance built without a process group (tp_size 1: the
rank's own rows, zeros elsewhere, before the all-reduce) and `engram_gate`, with `_cuda_kernels` answered
True under Triton's interpreter (the SM120 branch); `sglang.torch` runs `_owned_rows`' torch lookup and
`engram_gate`'s torch body (`_cuda_kernels` False). Under the interpreter the CPU tensors handed to the
two kernels' wrappers answer `is_cuda` True (their asserts ask for CUDA tensors; the kernels run the
same), and `libdevice.copysign`, which Triton's interpreter does not implement, is replaced by an exact
bitwise copysign for the gate kernel; on a GPU both run unchanged.

Inputs, in the production layout (V4.1-Flash: hidden D = 5120, hc_mult 4, rms_norm_eps 1e-6, clamp 1e-6;
the Engram config is not in SGLang's sources and is ASSUMED from the published text_config:
engram_head_dim 256, 8 heads x n-grams 2..4 = 24 hash columns, buckets above 16000000):
  ids      [T, 24] int64: hash_ids[:, layer 0] (a strided view of [T, 2, 24] in production; the lookup
           reshapes it), each column's ids inside its own segment [bounds[c], bounds[c + 1])
  table_w  [R, 256] float8_e4m3fn and table_s [R, 8] float8_e8m0fnu: global rows [A, A + R) of the table.
           Tiny cases hold the whole table (A = 0). Flash cases hold a window at the end of the rank's
           shard, read through base pointers biased by A (the kernel takes raw addresses): the row offsets
           are those of the full table (up to 384M rows, 98 GB), and every id the rank owns lies in the window
  x        [T, 4, D] bf16: the residual streams (state.residual)
  kv       [T, 5 D] bf16: wkv's output; q_weight, k_weight [4, D] bf16 (created under the checkpoint's bf16
           default dtype; assumed)
  input_ids [T] int64 (image cases: rows holding image_token_id keep x)
Outputs: `rows` [T, 24, 256] bf16 (exact: e4m3 times a power of two is representable) and `y` [T, 4, D] bf16.

Input magnitudes: table rows N(0, 1) times 2^U(-4, 0) per row, quantized per 32-wide block with the
smallest power-of-two scale within e4m3's 448 (wo_a's recipe); the row holding the table's first id all
zero (scale byte 0), and the row of the table's last id with scale byte 0 (2^-127, the kernel's special
case) over payloads in [2, 448] so that the products stay normal fp32 and exact in bf16. x O(1) with a
per-token scale 2^U(-1, 1), one zero row (a padding token: only eps keeps rstd finite, dot = 0 takes the
clamp); kv N(0, 1); q_weight, k_weight 1 + N(0, 0.1^2).

Boundaries the tiny cases sit on: D = 5120 in an 8192-lane block and D = 96 (the gate's mask), ids at
the table's first and last row, at a TP shard's first and last row and the rows just outside it (owned
vs zero), the host table's sorted reads, image rows.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import torch
import triton
import triton.language as tl

from harness.parity.op import (
    ORACLE,
    STRAY,
    Case,
    Metric,
    Path,
    Unavailable,
    as_cuda,
    case_maker,
    guarded,
    guarded_allocations,
    import_module,
    interpreted,
    load_by_path,
    plain,
    sibling,
)

OP = "engram_gate"
# the gate: fp32 arithmetic (two sums of squares and a dot product over D), one bf16 rounding of the
# output; the rows are exact. bf16's ceilings apply.
DTYPE = "bf16"
PRIMARY = "y"
OUTPUTS = {"rows": "bfloat16", "y": "bfloat16"}
TOLERANCE = (1e-2, 1e-2)
CEILINGS = {"rows_mismatch": 0.0}
UNJUDGED = {
    "rows.max_abs": "the looked-up rows are judged exactly, element by element, by rows_mismatch (ceiling 0); "
    "their largest difference is shown beside it",
}
HC = 4
HIDDEN = 5120
HEAD_DIM = 256
FP8_BLOCK = 32  # kernels/ops/quantization/fp4_fake_quant.py FP8_BLOCK_SIZE, the table's scale block
EPS = 1e-6  # rms_norm_eps
CLAMP = 1e-6  # Engram.clamp_value
WINDOW = 4096  # table rows a flash case holds
GATHER_PY = "kernels/ops/embeddings/engram_gather.py"
GATE_PY = "kernels/ops/embeddings/engram_gate.py"
HOST_ROW_HI = 2**62  # engram_gather's default row_hi: the shared host table owns every row

_hash = sibling(__file__, "engram_hash")
COLS = _hash.COLS
TINY_BUCKET = 13

_case = case_maker(D=HIDDEN, tp=1, rank=0, table="device", image=False, edge_rows=True, bucket=_hash.FLASH["bucket"])


def cases() -> list[Case]:
    tiny = dict(bucket=TINY_BUCKET)
    out = [
        _case("tiny_t3_tp1", {"tiny"}, T=3, **tiny),
        # rank 1 of 2 owns columns 12..23: ids at its first row and the row before it
        _case("tiny_t2_tp2_rank1", {"tiny"}, T=2, tp=2, rank=1, **tiny),
        # rank 1 of 4 owns columns 6..11: both of its edges and the rows outside them
        _case("tiny_t2_tp4_rank1_image", {"tiny"}, T=2, tp=4, rank=1, image=True, **tiny),
        _case("tiny_t3_host_sorted", {"tiny"}, T=3, table="host_shared", **tiny),
        _case("tiny_t4_d96", {"tiny"}, T=4, D=96, edge_rows=False, **tiny),
    ]
    for t in (1, 8, 64, 512, 4096):
        kind = "b" if t <= 64 else "t"
        out.append(_case(f"{kind}{t}_tp1_host", {"flash"}, T=t, table="host_shared"))
        for tp in (2, 4, 8):
            # rank 0: its shard ends where rank 1's starts, its window ends at row_hi - 1 (offsets > 2^31 B)
            out.append(_case(f"{kind}{t}_tp{tp}", {"flash", f"tp{tp}"} - {"tp2"}, T=t, tp=tp))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def shard(case: Case) -> tuple[int, int]:
    """shard_range: the rank's [row_lo, row_hi) on whole hash columns; the shared host table all rows."""
    p = case.params
    if p["table"] == "host_shared":
        return 0, HOST_ROW_HI
    b = _hash.column_bounds(p["bucket"], 0)
    per = COLS // p["tp"]
    return b[p["rank"] * per], b[(p["rank"] + 1) * per]


def window(case: Case) -> tuple[int, int]:
    """The global rows [A, A + R) the case's table tensors hold."""
    rows = _hash.column_bounds(case.params["bucket"], 0)[-1]
    if case.params["bucket"] == TINY_BUCKET:
        return 0, rows
    lo, hi = shard(case)
    hi = min(hi, rows)
    return hi - WINDOW, WINDOW


def _quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, 256] float -> (e4m3 [R, 256], e8m0 [R, 8]): per 32-wide block the smallest power-of-two scale
    within 448 (an all-zero block gets byte 0, 2^-127)."""
    R = w.shape[0]
    blocks = w.double().view(R, HEAD_DIM // FP8_BLOCK, FP8_BLOCK)
    amax = blocks.abs().amax(-1)
    exp = torch.where(amax > 0, torch.ceil(torch.log2(amax.clamp(min=1e-300) / 448.0)), -127.0).clamp(-127, 127)
    q = (blocks / torch.pow(2.0, exp)[..., None]).to(torch.float8_e4m3fn).view(R, HEAD_DIM)
    return q, (exp + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def _ids(case: Case, gen: torch.Generator) -> torch.Tensor:
    """Each column's ids in its own segment (a flash case reads what the rank owns from its window); the
    edges on the first two tokens."""
    p = case.params
    T = p["T"]
    b = _hash.column_bounds(p["bucket"], 0)
    lo, hi = shard(case)
    A, R = window(case)
    flash = p["bucket"] != TINY_BUCKET
    ids = torch.empty(T, COLS, dtype=torch.int64)
    for c in range(COLS):
        seg_lo, seg_hi = b[c], b[c + 1]
        if flash and lo <= seg_lo and seg_hi <= hi:
            seg_lo, seg_hi = A, A + R
        ids[:, c] = torch.randint(seg_lo, seg_hi, (T,), generator=gen)
    m = sum(1 for c in range(COLS) if b[c + 1] <= hi)  # the columns up to the shard's end
    if flash:
        edges = {m - 1: A + R - 1}  # the window's last row: the shard's (the table's, for the host table)
        if m < COLS:
            edges[m] = hi  # the next rank's first row: zero here
    else:
        edges = {0: 0, COLS - 1: b[-1] - 1}  # the table's first and last row
        if p["table"] == "device":
            k = b.index(lo)
            if k > 0:
                edges.update({k - 1: lo - 1, k: lo})  # the row before the shard (zero), its first row
            if m < COLS:
                edges.update({m - 1: hi - 1, m: hi})  # its last row, the row after it (zero)
    for c, v in edges.items():
        ids[0, c] = v
    if T >= 2 and not flash:
        ids[1, 0], ids[1, COLS - 1] = b[1] - 1, b[COLS - 1]  # the other ends of the first and last column
    return ids


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, D = p["T"], p["D"]
    A, R = window(case)
    ids = _ids(case, gen)
    w = torch.randn(R, HEAD_DIM, generator=gen) * torch.pow(2.0, -4 * torch.rand(R, 1, generator=gen))
    first, last = int(ids[0, 0]) - A, int(ids[0, COLS - 1]) - A
    if 0 <= first < R:
        w[first] = 0.0  # an untrained bucket: all zero, scale byte 0
    table_w, table_s = _quantize_rows(w)
    if 0 <= last < R:  # scale byte 0 (2^-127) over payloads in [2, 448]: the kernel's special case
        mag = 2.0 + 446.0 * torch.rand(HEAD_DIM, generator=gen)
        sign = torch.where(torch.rand(HEAD_DIM, generator=gen) < 0.5, -1.0, 1.0)
        table_w[last] = (mag * sign).to(torch.float8_e4m3fn)
        table_s[last] = torch.zeros(HEAD_DIM // FP8_BLOCK, dtype=torch.uint8).view(torch.float8_e8m0fnu)
    token = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 2 - 1)
    x = torch.randn(T, HC, D, generator=gen) * token
    if p["edge_rows"] and T >= 3:
        x[-1] = 0.0  # a padding token
    kv = torch.randn(T, (HC + 1) * D, generator=gen)
    q_weight = 1.0 + 0.1 * torch.randn(HC, D, generator=gen)
    k_weight = 1.0 + 0.1 * torch.randn(HC, D, generator=gen)
    input_ids = torch.randint(0, 129279, (T,), generator=gen)
    if p["image"]:
        input_ids[::2] = image_token_id(case)
    return {
        "ids": ids,
        "table_w": table_w.contiguous(),
        "table_s": table_s.contiguous(),
        "x": x.to(torch.bfloat16).contiguous(),
        "kv": kv.to(torch.bfloat16).contiguous(),
        "q_weight": q_weight.to(torch.bfloat16).contiguous(),
        "k_weight": k_weight.to(torch.bfloat16).contiguous(),
        "input_ids": input_ids,
    }


def image_token_id(case: Case) -> int | None:
    return 128815 if case.params["image"] else None  # any id: the gate only compares with it


def cost(case: Case) -> tuple[float, float]:
    """24 table rows (256 + 8 B) read and written in bf16 per token; x, kv, the weights read, y written;
    about 8 flops per element of a stream."""
    T, D = case.params["T"], case.params["D"]
    gather = T * COLS * (HEAD_DIM + HEAD_DIM // FP8_BLOCK + 2 * HEAD_DIM)
    gate = T * (HC * D * 2 * 2 + (HC + 1) * D * 2) + 2 * HC * D * 2
    return float(gather + gate), float(T * COLS * HEAD_DIM + 8.0 * T * HC * D)


# ---------------------------------------------------------------------------------------------- oracle


def rows_f64(t: dict, case: Case) -> torch.Tensor:
    """The lookup in float64 from the definition: owned ids decoded from the window, others zero."""
    lo, hi = shard(case)
    A, R = window(case)
    ids = t["ids"].to("cpu")
    owned = (ids >= lo) & (ids < hi)
    local = torch.where(owned, ids - A, 0)
    assert bool(((local >= 0) & (local < R)).all()), "an owned id outside the case's window"
    scale = torch.pow(2.0, t["table_s"].to("cpu").view(torch.uint8).double() - 127.0)
    table = t["table_w"].to("cpu").double() * scale.repeat_interleave(FP8_BLOCK, -1)
    return torch.where(owned[..., None], table[local], 0.0)


def gate_f64(x, kv, q_weight, k_weight, input_ids=None, image_id=None) -> torch.Tensor:
    """float64 from the definition in the module docstring: x [T, 4, D] -> y [T, 4, D]."""
    xd = x.double()
    T, hc, D = xd.shape
    key = kv.double()[:, : hc * D].view(T, hc, D)
    value = kv.double()[:, hc * D :].view(T, 1, D)
    rstd = torch.rsqrt(xd.square().mean(-1) + EPS) * torch.rsqrt(key.square().mean(-1) + EPS)
    dot = (xd * q_weight.double() * k_weight.double() * key).sum(-1) * rstd * D**-0.5
    gate = torch.sigmoid(torch.copysign(dot.abs().clamp(min=CLAMP).sqrt(), dot))
    y = xd + gate[..., None] * value
    if image_id is not None:
        y = torch.where((input_ids == image_id)[:, None, None], xd, y)
    return y


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    image = image_token_id(case)
    y = gate_f64(t["x"], t["kv"], t["q_weight"], t["k_weight"], t["input_ids"] if image is not None else None, image)
    return {"rows": rows_f64(t, case), "y": y}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`rows_mismatch`: looked-up elements whose value is not the exact dequantized one (every one is
    representable in bf16), ceiling 0."""
    got = outputs["rows"].to("cpu", torch.float64)
    want = oracle_out["rows"].to("cpu", torch.float64)
    if got.shape != want.shape:
        raise ValueError(f"rows shape {tuple(got.shape)} is not the oracle's {tuple(want.shape)}")
    wrong = ~((got == want) | (got.isnan() & want.isnan()))
    first = wrong.nonzero()[0].tolist() if bool(wrong.any()) else None
    detail = {
        "ids": int(wrong.any(-1).sum()),
        "first": first,
        "id": int(inputs["ids"].to("cpu")[tuple(first[:2])]) if first else None,
        "got": float(got[tuple(first)]) if first else None,
        "want": float(want[tuple(first)]) if first else None,
    }
    return [Metric("rows_mismatch", float(wrong.sum()), unit="count", detail=detail)]


# ---------------------------------------------------------------------------------------------- paths


_dev, _plain = as_cuda, plain  # CPU tensors that answer is_cuda under the interpreter (harness/workers/interpreter.py)


@triton.jit
def _copysign(a, b):
    """libdevice.copysign for Triton's interpreter, which has none: |a| with b's sign bit (-0.0 included)."""
    return tl.where(b.to(tl.int32, bitcast=True) < 0, -tl.abs(a), tl.abs(a))


def _gate_kernels(module):
    """The gate kernel's module, its `libdevice.copysign` answered by `_copysign` under the interpreter."""
    if interpreted():
        module.libdevice = SimpleNamespace(copysign=_copysign)
    return module


def _ptrs(t: dict, case: Case) -> tuple[int, int]:
    """The addresses engram_gather reads global row id at `ptr + (id - row_lo) * row bytes`: the base of the
    rank's rows (for the host table, of row 0), from the window's base (biased by A where A > row_lo)."""
    lo = 0 if case.params["table"] == "host_shared" else shard(case)[0]
    A, _ = window(case)
    return (
        t["table_w"].data_ptr() + (lo - A) * HEAD_DIM,
        t["table_s"].data_ptr() + (lo - A) * (HEAD_DIM // FP8_BLOCK),
    )


def _gate_args(t: dict, case: Case, dev) -> tuple:
    image = image_token_id(case)
    ids = dev(t["input_ids"]) if image is not None else None
    return (*(dev(t[k]) for k in ("x", "kv", "q_weight", "k_weight")), EPS, CLAMP, ids, image)


def sglang_triton(t: dict, case: Case, gather_module=None, gate_module=None) -> dict[str, torch.Tensor]:
    """engram_gather with `_owned_rows`' (device table) or `forward`'s (shared host table) arguments, then
    fused_engram_gate as engram_gate calls it; the modules may be edited copies (tests/ops/planted_engram_gate.py)."""
    g = gather_module or load_by_path(GATHER_PY)
    gm = _gate_kernels(gate_module or load_by_path(GATE_PY))
    T = case.params["T"]
    lo, hi = shard(case)
    host = case.params["table"] == "host_shared"
    kw = {"sort_ids": True} if host else {"row_lo": lo, "row_hi": hi, "sort_ids": False}
    out = guarded((T * COLS, HEAD_DIM), torch.bfloat16, t["ids"].device)
    g.engram_gather(*_ptrs(t, case), _dev(t["ids"].reshape(-1)), out.view, HEAD_DIM, FP8_BLOCK, **kw)
    with guarded_allocations(gm) as allocs:
        y = gm.fused_engram_gate(*_gate_args(t, case, _dev))
    stray = out.result()[STRAY] + allocs.result()[STRAY]
    return {"rows": out.view.view(T, COLS, HEAD_DIM), "y": _plain(y), STRAY: stray}


def _embedding(t: dict, case: Case, eng):
    """An EngramEmbedding built without a process group: the fields its forward reads, as __init__ sets
    them for a device shard (row_start, rows, weight, scale) or the shared host table (its base pointers)."""
    e = eng.EngramEmbedding.__new__(eng.EngramEmbedding)
    torch.nn.Module.__init__(e)
    lo, hi = shard(case)
    A, R = window(case)
    e.dim, e.tp_size, e.peer, e.staged_by_scheduler = HEAD_DIM, 1, None, False
    if case.params["table"] == "host_shared":
        e.host_table = SimpleNamespace(layout="shared")
        e._host_table_ptrs = _ptrs(t, case)
        e._sort_host_reads = True  # _sorted_host_reads: no ATS on an RTX PRO 6000
        e.row_start, e.rows = 0, _hash.column_bounds(case.params["bucket"], 0)[-1]
        return e
    e.host_table, e._sort_host_reads = None, False
    e.row_start, e.rows = lo, hi - lo
    if A <= lo:  # the case holds the whole shard: weight and scale are its rows
        e.weight = torch.nn.Parameter(t["table_w"][lo - A : hi - A], requires_grad=False)
        e.scale = torch.nn.Parameter(t["table_s"][lo - A : hi - A], requires_grad=False)
    else:  # a window of it: the base addresses biased as _ptrs says, in place of weight.data_ptr()
        ptrs = _ptrs(t, case)
        e._table_ptrs = lambda: ptrs
        e.weight = e.scale = None
    return e


def _layer(t: dict, case: Case, cuda_kernels: bool | None) -> dict[str, torch.Tensor]:
    eng = import_module("sglang.srt.layers.engram")
    gate_pkg = _gate_kernels(import_module("sglang.kernels.ops.embeddings.engram_gate"))
    e = _embedding(t, case, eng)
    if cuda_kernels is False and e.host_table is not None:
        raise Unavailable("the shared host table is read by engram_gather on every platform")
    if cuda_kernels is False and e.weight is None:
        raise Unavailable("the torch lookup indexes the whole shard; this case holds a window of it")
    dev = _dev if cuda_kernels is not False else (lambda x: x)
    answer = (lambda x: cuda_kernels) if cuda_kernels is not None else eng._cuda_kernels
    with mock.patch.object(eng, "_cuda_kernels", answer), guarded_allocations(eng, gate_pkg) as allocs:
        rows = e(dev(t["ids"]))
        y = eng.engram_gate(*_gate_args(t, case, dev))
    return {"rows": _plain(rows), "y": _plain(y), **allocs.result()}


def sglang_layer(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """EngramEmbedding.forward and engram_gate down their CUDA branches (`_cuda_kernels` True on an SM120
    GPU; answered True under the interpreter)."""
    return _layer(t, case, True if interpreted() else None)


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`_owned_rows`' torch lookup and engram_gate's torch body (`_cuda_kernels` False)."""
    return _layer(t, case, False)


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition (rows exact)"),
    Path(
        "sglang.triton",
        sglang_triton,
        note="kernels/ops/embeddings/engram_gather.py engram_gather + engram_gate.py fused_engram_gate, by file path",
    ),
    Path("sglang.layer", sglang_layer, note="EngramEmbedding.forward + engram_gate, CUDA branch (the Triton kernels)"),
    Path("sglang.torch", sglang_torch, note="EngramEmbedding._owned_rows torch lookup + engram_gate torch body"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.embeddings.engram_gather:engram_gather": (
        "the staged rows' call (dequant_staged: ids = arange, row_hi = staged rows); per-rank host tables"
    ),
    "sglang.kernels.ops.embeddings.engram_gate:fused_engram_gate": "fp32 activations (V4.1 runs bf16)",
}

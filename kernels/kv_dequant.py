"""DeepSeek-V4 paged FP8 KV cache: gather tokens by slot id and dequantize them to bf16.

Call sites:
  - `srt/layers/attention/deepseek_v4_backend.py` (sparse prefill) calls the Triton
    `dequantize_k_cache_paged_dsv4(quant_k_cache, page_table_1_flattened, page_size, out=workspace[a:b],
    layout=KVLayout.V4)` (`kernels/ops/attention/dsv4/dequant_k_cache.py`) for the SWA tokens and the
    compressed (c4 / c128) tokens, writing into slices of one bf16 workspace;
  - `kernels/ops/attention/flash_mla_sm120.py:_sm120_sparse_decode_fwd` (the SM120 PyTorch decode
    fallback, `SGLANG_SM120_FLASHMLA_BACKEND=torch`) calls `_gather_and_dequant(k_cache, indices,
    page_size)`, the fused KV gather + dequant in PyTorch.

Inputs, in the production layout:
  k_cache   [pages, page_bytes] uint8, the V4 layout of harness/dsv4.py: per page `page_size x 576 B`
            (448 fp8-e4m3 nope then 64 bf16 rope) then `page_size x 8 B` of UE8M0 scales (7 used), padded
            to a multiple of 576 B (`page_bytes = ceil(page_size*584/576)*576`): 256-token SWA pages
            (149760 B), 64-token c4 pages (37440 B), 2-token c128 pages (1728 B). The Triton kernel takes
            it as is; `_gather_and_dequant` takes the strided [pages, page_size, 1, 584] fp8 view.
  indices   [B, 1, topk] int32 token slots (page * page_size + offset), the decode layout; the Triton
            kernel gets them flattened, as its `page_table_1_flattened` [N]. SWA rows are contiguous
            128-token windows (they cross page boundaries); c4 / c128 rows are scattered top-k picks;
            slots repeat across rows. Cases tagged `neg1` hold -1 entries.

Output: `kv` [N, 512], N = B * topk, the dequantized rows in index order (`nope[i] * 2^(scale[i//64]-127)`
then the raw rope). The Triton path also returns `guard` [2, 512]: the workspace rows just before and
just after its `out=` slice, filled with a sentinel before the call (see `writes_outside_out`).

What each does with -1 (checked by `invalid_rows_nonfinite` and reported in its detail):
  - `_gather_and_dequant` documents -1 as invalid and clamps after a floor division, so -1 reads page 0's
    *last* slot (page -1 -> 0, offset -1 % page_size = page_size - 1); its caller zeroes those rows.
  - the test reference `dequantize_k_cache_paged_ref` indexes the flat buffer at a negative offset, which
    torch wraps around: -1 reads the pool's last slot.
  - the Triton kernel truncates (-1 // P = 0, -1 % P = -1): it reads 576 B before the buffer. It does not
    accept -1 (its callers pass only real slots), so it is skipped on those cases, with the reason.

UE8M0 byte 0: the fp64 oracle decodes it as 2^-127 (the OCP MX E8M0 value, what torch's float8_e8m0fnu
gives and so `_gather_and_dequant`); the Triton kernel computes exp2(0 - 127), a subnormal fp32 that a GPU
may flush; SGLang's test reference flushes it to 0 on purpose. Values there are below 448 * 2^-127 and
round in bf16's subnormal range, so the difference is invisible to drift; `scale0_mismatch` counts it
(with how many were flushed to zero), without a ceiling. Under TRITON_INTERPRET=1 the Triton kernel shows
a few there that are the interpreter's own: its numpy emulation of the fp32 -> bf16 cast mis-rounds
subnormal results.
"""

from __future__ import annotations

import inspect

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, Unavailable, case_maker, dsv4, function, import_module

OP = "kv_dequant"
# fp8 (4 significant bits) times a power of two fits bf16 (8 bits) exactly above bf16's subnormal
# range: a correct kernel is exact there, so the metrics count wrong elements rather than drift
DTYPE = "bf16"
PRIMARY = "kv"
OUTPUTS = {"kv": "bfloat16"}
TOLERANCE = (1e-30, 0.0)  # atol: below it only the UE8M0 byte-0 conventions differ
# below 2^-126 bf16 rounds (subnormals) and the UE8M0 code-0 conventions differ, by at most
# 448 * 2^-127 ~ 1.3e-36: anything above 1e-30 is a wrong value, not a convention
CEILINGS = {
    "calc_diff": 1e-12,
    "worst_row_calc_diff": 1e-12,
    "max_abs": 1e-30,
    "mismatch": 0.0,
    "invalid_rows_nonfinite": 0.0,
    "writes_outside_out": 0.0,
}
SENTINEL = 0x7FC1  # a bf16 NaN with a payload no kernel writes


_case = case_maker(page=256, pool=16384, B=1, topk=128, window=False, neg1=False, scale0=False)


def cases() -> list[Case]:
    swa = dict(page=256, window=True)
    c4 = dict(page=64, pool=65536, topk=512)
    c128 = dict(page=2, pool=8192, topk=64)
    return [
        _case("tiny_b2_swa128_p256", {"tiny"}, pool=512, B=2, **swa),
        _case("tiny_b3_c4x64_p64_scale0", {"tiny", "scale0"}, page=64, pool=256, B=3, topk=64, scale0=True),
        _case("tiny_b2_c128x64_p2", {"tiny"}, page=2, pool=128, B=2, topk=64),
        _case("tiny_b2_c4x64_p64_neg1", {"tiny", "neg1"}, page=64, pool=256, B=2, topk=64, neg1=True),
        # sparse prefill's flat SWA token list, of a length that leaves the Triton kernel's last
        # 4-token program partly masked
        _case("tiny_prefill_swa_n77_p256", {"tiny"}, page=256, pool=512, topk=77),
        # DeepSeek-V4-Flash: one KV head (MQA), so nothing here depends on TP
        _case("b1_swa128_p256", {"flash"}, B=1, **swa),
        _case("b8_swa128_p256", {"flash"}, B=8, **swa),
        _case("b64_swa128_p256", {"flash"}, B=64, **swa),
        _case("b1_c4x512_p64", {"flash"}, B=1, **c4),
        _case("b8_c4x512_p64", {"flash"}, B=8, **c4),
        _case("b32_c4x512_p64", {"flash"}, B=32, **c4),
        _case("b8_c4x512_p64_scale0", {"flash", "scale0"}, B=8, scale0=True, **c4),
        _case("b8_c4x512_p64_neg1", {"flash", "neg1"}, B=8, neg1=True, **c4),
        _case("b8_c128x64_p2", {"flash"}, B=8, **c128),
        _case("b64_c128x64_p2", {"flash"}, B=64, **c128),
        _case("prefill_swa_n8191_p256", {"flash"}, topk=8191, page=256),
        _case("prefill_c4_n16383_p64", {"flash"}, topk=16383, page=64, pool=65536),
    ]


# ---------------------------------------------------------------------------------------------- inputs


def _cache(n: int, page: int, scale0: bool, gen: torch.Generator) -> torch.Tensor:
    """Random K rows, packed. Every (token, 64-value group) gets its own magnitude, 2^-12..2^5, so
    neighbouring tokens and groups have different UE8M0 scales (a scale read from the wrong token or
    group changes the value). With `scale0`, 3% of the groups get scale byte 0 (a group whose amax is
    below 448 * 2^-127), their fp8 bytes left as they are."""
    groups = dsv4.DIM // dsv4.SCALE_GROUP
    mag = torch.pow(2.0, torch.randint(-12, 6, (n, groups, 1), generator=gen).float())
    k = (torch.randn(n, groups, dsv4.SCALE_GROUP, generator=gen) * mag).reshape(n, dsv4.DIM)
    nope8, scale_bytes, rope = dsv4.quantize_v4(k)
    if scale0:
        scale_bytes[torch.rand(scale_bytes.shape, generator=gen) < 0.03] = 0
    return dsv4.pack_pages(nope8, scale_bytes, rope, page)


def _indices(p: dict, gen: torch.Generator) -> torch.Tensor:
    B, topk, pool = p["B"], p["topk"], p["pool"]
    if p["window"]:
        # the SWA window: topk consecutive slots from a random start (wrapping), across page boundaries
        start = torch.randint(0, pool, (B, 1), generator=gen)
        idx = (start + torch.arange(topk)) % pool
    else:
        # top-k picks: distinct within a row, repeated across rows
        idx = torch.stack([torch.randperm(pool, generator=gen)[:topk] for _ in range(B)])
    if p["neg1"]:
        idx[-1, 3 * topk // 4 :] = -1  # trailing padding
        idx[0, torch.randperm(topk, generator=gen)[: max(1, topk // 16)]] = -1  # holes
    return idx.to(torch.int32).view(B, 1, topk)


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    return {"k_cache": _cache(p["pool"], p["page"], p["scale0"], gen), "indices": _indices(p, gen)}


def _flat(t: dict) -> torch.Tensor:
    return t["indices"].reshape(-1)


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """A -1 entry has no defined output (the caller masks it): only real slots are compared."""
    return {"kv": (_flat(t) >= 0)[:, None]}


def cost(case: Case) -> tuple[float, float]:
    """Each gathered token's 584 B and its 4 B index read once, 512 bf16 written; one multiply per
    nope value."""
    n = case.params["B"] * case.params["topk"]
    return float(n * (dsv4.TOKEN_BYTES + 4 + dsv4.DIM * 2)), float(n * dsv4.NOPE)


# ---------------------------------------------------------------------------------------------- oracle


def _exact_rows(k_cache: torch.Tensor, idx: torch.Tensor, page: int) -> torch.Tensor:
    """float64 exact dequantization of the slots `idx` (>= 0): only the pages they touch."""
    pages, where = torch.unique(idx.long() // page, return_inverse=True)
    exact = dsv4.dequantize_pages(k_cache[pages], page)
    return exact[where * page + idx.long() % page]


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    idx = _flat(t)
    valid = idx >= 0
    kv = torch.zeros(idx.numel(), dsv4.DIM, dtype=torch.float64, device=idx.device)
    if bool(valid.any()):
        kv[valid] = _exact_rows(t["k_cache"], idx[valid], case.params["page"])
    return {"kv": kv}


# ---------------------------------------------------------------------------------------------- metrics


def _scale_bytes(k_cache: torch.Tensor, idx: torch.Tensor, page: int) -> torch.Tensor:
    """[N, 7] the UE8M0 bytes of each slot (>= 0), read from the scale section."""
    groups = dsv4.NOPE // dsv4.SCALE_GROUP
    base = page * dsv4.TOKEN_DATA + (idx.long() % page) * 8
    cols = base[:, None] + torch.arange(groups)
    return k_cache[(idx.long() // page)[:, None].expand(-1, groups), cols]


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """Elements not equal to the bf16 rounding of the exact value, split by what they are: the plain
    ones (`mismatch`, ceiling 0), those under UE8M0 byte 0 (`scale0_mismatch`, a convention: no
    ceiling), the rows at -1 (`invalid_rows_nonfinite`), and writes past the `out=` slice."""
    page = case.params["page"]
    idx = _flat(inputs)
    valid = idx >= 0
    kv = outputs["kv"].to("cpu", torch.float64)
    want = oracle_out["kv"].to("cpu").float().to(torch.bfloat16).double()  # exact in fp32, one rounding
    scale0 = torch.zeros(kv.shape, dtype=torch.bool)
    if bool(valid.any()):
        zero = _scale_bytes(inputs["k_cache"], idx[valid], page) == 0
        scale0[valid, : dsv4.NOPE] = zero.repeat_interleave(dsv4.SCALE_GROUP, 1)
    differ = ~(kv == want) & valid[:, None]  # NaN counts as different
    plain = differ & ~scale0
    bad_rows = plain.any(1).nonzero().flatten()
    first = plain.nonzero()[0].tolist() if bad_rows.numel() else None
    out = [
        Metric(
            "mismatch",
            float(plain.sum()),
            unit="count",
            detail={
                "rows": int(bad_rows.numel()),
                "nope": int(plain[:, : dsv4.NOPE].sum()),
                "rope": int(plain[:, dsv4.NOPE :].sum()),
                "first": first,
                "first_slot": int(idx[first[0]]) if first else None,
            },
        )
    ]
    if bool(scale0.any()):
        s0 = differ & scale0
        flushed = s0 & (kv == 0) & (want != 0)
        out.append(
            Metric(
                "scale0_mismatch",
                float(s0.sum()),
                unit="count",
                detail={
                    "elements_under_byte0": int(scale0.sum()),
                    "flushed_to_zero": int(flushed.sum()),
                    "oracle": "UE8M0 byte 0 = 2^-127 (OCP MX E8M0); SGLang's test reference decodes it as 0",
                },
            )
        )
    if not bool(valid.all()):
        rows = kv[~valid]
        out.append(
            Metric(
                "invalid_rows_nonfinite",
                float((~rows.isfinite()).sum()),
                unit="count",
                detail={"rows": int(rows.shape[0]), "reads": _what_neg1_reads(rows, inputs["k_cache"], page)},
            )
        )
    if "guard" in outputs:
        bits = outputs["guard"].to("cpu").contiguous().view(torch.int16)
        out.append(Metric("writes_outside_out", float((bits != SENTINEL).sum()), unit="count"))
    return out


def _what_neg1_reads(rows: torch.Tensor, k_cache: torch.Tensor, page: int) -> str:
    """Which slot the rows at -1 hold, among the ones an implementation plausibly reads."""
    pool = k_cache.shape[0] * page
    candidates = (("slot 0", 0), (f"page 0's last slot ({page - 1})", page - 1), ("the pool's last slot", pool - 1))
    for name, slot in candidates:
        ref = _exact_rows(k_cache, torch.tensor([slot]), page).float().to(torch.bfloat16).double()
        if bool((rows == ref).all()):
            return name
    if bool((rows == 0).all()):
        return "zeros"
    return "other values"


# ---------------------------------------------------------------------------------------------- paths


def _triton_call(t: dict, case: Case):
    """Set up the workspace (one guard row either side of the `out=` slice, as the sparse-prefill
    workspace is sliced) and return the call that runs the kernel alone, and the workspace."""
    if not bool((t["indices"] >= 0).all()):
        raise Unavailable(
            "dequantize_k_cache_paged_dsv4 does not accept -1: it truncates (-1 // P = 0, -1 % P = -1) "
            "and reads 576 B before the page"
        )
    mod = "sglang.kernels.ops.attention.dsv4.dequant_k_cache"
    # named dequantize_k_cache_paged up to SGLang 0.5.22; `layout` (V4 / V4.1) from 0.5.21
    dequant = function(f"{mod}:dequantize_k_cache_paged_dsv4", f"{mod}:dequantize_k_cache_paged")
    kw = {"layout": function(f"{mod}:KVLayout").V4} if "layout" in inspect.signature(dequant).parameters else {}
    idx = _flat(t)
    n = idx.numel()
    workspace = torch.full((n + 2, 1, dsv4.DIM), SENTINEL, dtype=torch.int16, device=idx.device).view(torch.bfloat16)
    out = workspace[1 : n + 1]
    page = case.params["page"]

    def call():
        return dequant(t["k_cache"], idx, page, out=out, **kw)

    return call, workspace


def sglang_triton(t: dict, case: Case) -> dict[str, torch.Tensor]:
    call, workspace = _triton_call(t, case)
    kv = call()
    return {"kv": kv[:, 0], "guard": workspace[[0, -1], 0]}


def sglang_torch_gather(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.kernels.ops.attention.flash_mla_sm120")
    page = case.params["page"]
    kv = mod._gather_and_dequant(dsv4.paged_view(t["k_cache"], page), t["indices"], page)
    return {"kv": kv.reshape(-1, dsv4.DIM)}


def sglang_test_reference(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.test.kernels.deepseek_v4.k_cache_reference")
    kv = mod.dequantize_k_cache_paged_ref(t["k_cache"], _flat(t), case.params["page"])
    return {"kv": kv[:, 0]}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 exact dequantization of the gathered slots (harness/dsv4.py)"),
    Path(
        "sglang.triton",
        sglang_triton,
        timed=lambda t, case: _triton_call(t, case)[0],
        note="dsv4/dequant_k_cache.py:dequantize_k_cache_paged_dsv4, out= a slice of a guarded workspace",
    ),
    Path(
        "sglang.torch_gather",
        sglang_torch_gather,
        note="flash_mla_sm120._gather_and_dequant, the SM120 PyTorch decode fallback's gather",
    ),
    Path(
        "sglang.test_reference",
        sglang_test_reference,
        note="test/kernels/deepseek_v4/k_cache_reference.dequantize_k_cache_paged_ref (UE8M0 byte 0 -> 0)",
    ),
]


# none of its paths is on the SM120 default path of kernels/inventory/: a Triton fallback, the torch decode
# fallback's gather and SGLang's test reference
COVERS: dict[str, str] = {}

UNJUDGED = {
    "scale0_mismatch": "UE8M0 byte 0 decodes to 2^-127, to a flushed subnormal or to 0 by each path's convention "
    "(the module docstring): the values there round in bf16's subnormal range, invisible to every consumer",
}

"""The real MLA op with SGLang's Triton fallback fed the bugs a kernel really has: the sink dropped,
one UE8M0 scale off by one exponent step, one index off by one. Each must be flagged."""

from pathlib import Path as _P

from harness.parity.op import Path, dsv4, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mla_sparse_decode.py")
OP = "planted_mla"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs, valid_region = _real.make_inputs, _real.valid_region
CASE = "tiny_b3_h4_swa64_c4x64"


def cases():
    return [c for c in _real.cases() if c.name == CASE]


def sink_dropped(t, case):
    return _real.sglang_triton({k: v for k, v in t.items() if k != "attn_sink"}, case)


def _heaviest(t, case) -> int:
    """Position in row 0's main top-k of the token head 0 attends to most: a fault there matters."""
    exact = dsv4.dequantize_pages(t["k_cache"], case.params["page"])
    n = int(t["topk_length"][0]) if "topk_length" in t else t["indices"].shape[-1]
    idx = t["indices"][0, 0, :n].long()
    scores = exact[idx.clamp(min=0)] @ t["q"][0, 0, 0].double()
    return int(scores.masked_fill(idx < 0, -1e30).argmax())


def scale_off_by_one(t, case):
    """One UE8M0 scale byte (third 64-value group) of that token, one step (x2) too large."""
    k = t["k_cache"].clone()
    page_size = case.params["page"]
    page, off = divmod(int(t["indices"][0, 0, _heaviest(t, case)]), page_size)
    k[page, page_size * dsv4.TOKEN_DATA + off * 8 + 2] += 1
    return _real.sglang_triton({**t, "k_cache": k}, case)


def index_off_by_one(t, case):
    """That token's slot read as its neighbour's."""
    idx = t["indices"].clone()
    idx[0, 0, _heaviest(t, case)] += 1
    return _real.sglang_triton({**t, "indices": idx}, case)


PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton")] + [
    Path("planted.sink_dropped", sink_dropped),
    Path("planted.scale_off_by_one", scale_off_by_one),
    Path("planted.index_off_by_one", index_off_by_one),
]

"""The V4.1 prefill top-k (kernels/topk_ragged_v2.py), its CPU path clean, and copies of SGLang's torch selection
(`_torch_prefill`: topk + write_prefill) with one deliberate error each:
  - unmasked_tail: the top-k taken over the whole tile width, the columns past a row's length not masked to -inf
    (what the logits kernel left there wins; write_prefill then drops them to -1);
  - k_minus_one: one slot short (the k-th best dropped, its slot left -1), as `topk(k - 1)` into a k-wide row."""

from pathlib import Path as _P

from harness.parity.op import Path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "topk_ragged_v2.py")
OP = "planted_topk_ragged_v2"
DTYPE, PRIMARY, TOLERANCE, CEILINGS, UNJUDGED = (
    _real.DTYPE,
    _real.PRIMARY,
    _real.TOLERANCE,
    _real.CEILINGS,
    _real.UNJUDGED,
)
OUTPUTS = _real.OUTPUTS
make_inputs, metrics = _real.make_inputs, _real.metrics


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def unmasked_tail(t, case):
    lc = int(t["lens"].max())
    return _real.run_torch(t, case, select=lambda s, k: t["logits"][:, :lc].topk(k, dim=-1, sorted=False).indices)


def k_minus_one(t, case):
    def select(s, k):
        idx = s.topk(k, dim=-1).indices.clone()
        idx[:, -1] = s.shape[1]  # past every row's length: write_prefill writes -1 there
        return idx

    return _real.run_torch(t, case, select=select)


PATHS = [p for p in _real.PATHS if not p.needs_cuda] + [
    Path("planted.unmasked_tail", unmasked_tail),
    Path("planted.k_minus_one", k_minus_one),
]

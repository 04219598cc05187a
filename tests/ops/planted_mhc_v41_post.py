"""mhc_v41_post with a fault its kernel can really have: `_mhc_post_split_h_kernel` in a copy of SGLang's
mhc_post_split_h.py reading comb transposed for streams 1..3 (comb[j][i] for comb[i][j]; stream 0's load is
left right, so only part of the mix is wrong). The clean SGLang paths run beside it."""

from __future__ import annotations

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_v41_post.py")
OP = "planted_mhc_v41_post"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.OUTPUTS
CEILINGS, metrics = _real.CEILINGS, _real.metrics
make_inputs, cost, cases = _real.make_inputs, _real.cost, _real.cases

SHIPPED = "comb = tl.load(C + token * 16 + i * 4 + channel)"
PLANTED = "comb = tl.load(C + token * 16 + channel * 4 + i)"


def comb_transposed(t, case):
    return _real.sglang_split_h(t, case, load_by_path("kernels/ops/layernorm/mhc_post_split_h.py", (SHIPPED, PLANTED)))


PATHS = list(_real.PATHS) + [Path("planted.comb_transposed", comb_transposed)]

"""mhc_v41_mix with a fault its kernel can really have: `_hc_mix_reduce_sinkhorn_kernel` in a copy of SGLang's
mhc.py with pre's `+ EPS` dropped (the hc_eps term, 1e-6, the smallest of the definition: invisible to a
calc_diff, a constant shift of the mean signed error). The clean SGLang paths run beside it."""

from __future__ import annotations

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_v41_mix.py")
OP = "planted_mhc_v41_mix"
DTYPE, PRIMARY, TOLERANCE, OUTPUTS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.OUTPUTS
CEILINGS, metrics = _real.CEILINGS, _real.metrics
make_inputs, cost, cases = _real.make_inputs, _real.cost, _real.cases

SHIPPED = "pre = tl.sigmoid(a_pre * rsqrt * s0 + tl.load(base_ptr + j)) + EPS"
PLANTED = "pre = tl.sigmoid(a_pre * rsqrt * s0 + tl.load(base_ptr + j))"


def pre_eps_dropped(t, case):
    return _real.sglang_triton(t, case, load_by_path("kernels/ops/layernorm/mhc.py", (SHIPPED, PLANTED)))


PATHS = [p for p in _real.PATHS if p.name != "sglang.model"] + [Path("planted.pre_eps_dropped", pre_eps_dropped)]

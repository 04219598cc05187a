"""SGLang's Triton hc_head kernel, copied from kernels/ops/layernorm/mhc_head.py with one line changed:
the mean of squares taken over one stream's width (hidden_size) rather than all four (K_TOTAL), and
the rsqrt's norm_eps dropped (the zero padding row then divides 0 by 0). The clean paths run beside."""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "mhc_head.py")
OP = "planted_mhc_head"
DTYPE, PRIMARY, TOLERANCE = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE
make_inputs, cost = _real.make_inputs, _real.cost
CASE = "tiny_t4_edge"

SHIPPED = "rsqrt = tl.rsqrt(sumsq / K_TOTAL + norm_eps)"
EDITS = {
    "mean_over_one_stream": "rsqrt = tl.rsqrt(sumsq / hidden_size + norm_eps)",
    "norm_eps_dropped": "rsqrt = tl.rsqrt(sumsq / K_TOTAL)",
}


def cases():
    return [c for c in _real.cases() if c.name == CASE]


@functools.cache
def patched(tag: str):
    """mhc_head.py with EDITS[tag] for its rsqrt line, written to a file (Triton reads a kernel's
    source from its file) and imported under a name of its own."""
    text = (require_root() / "sglang" / "kernels" / "ops" / "layernorm" / "mhc_head.py").read_text()
    assert text.count(SHIPPED) == 1, "mhc_head.py no longer computes its rsqrt this way"
    file = _P(tempfile.mkdtemp(prefix="sm120-harness-planted-")) / f"mhc_head_{tag}.py"
    file.write_text(text.replace(SHIPPED, EDITS[tag]))
    name = f"_sm120_harness_planted_mhc_head_{tag}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


PATHS = list(_real.PATHS) + [
    Path(f"planted.{tag}", lambda t, c, tag=tag: _real.sglang_triton(t, c, module=patched(tag))) for tag in EDITS
]

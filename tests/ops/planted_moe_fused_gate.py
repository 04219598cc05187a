"""The real router top-k op, its CPU-runnable SGLang paths clean, and copies of SGLang's moe_fused_gate.py
with one line edited as a review could miss it: the square root dropped from the V4 sqrt-softplus, the
padding test off by one (`<=` for `<`), the fused shared slot's weight given the other branch's value.
Each must be flagged; the clean kernel must not be. The ties case shows SGLang's torch reference breaking
exact ties otherwise than its kernels' lowest-id rule."""

import importlib.util
import sys
import tempfile
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "moe_fused_gate.py")
OP = "planted_moe_fused_gate"
DTYPE, PRIMARY, TOLERANCE, CEILINGS = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.CEILINGS
make_inputs, valid_region, metrics, cost = _real.make_inputs, _real.valid_region, _real.metrics, _real.cost
CASES = ("tiny_t8_s1_pad5", "tiny_t8_s0_ties")
SOURCE = "kernels/ops/moe/moe_fused_gate.py"
EDITS = {
    "sqrt_dropped": ("            activated = tl.sqrt(sp)", "            activated = sp"),
    "padding_off_by_one": (
        "live_m = live_m & (offs_m < tl.load(num_token_non_padded_ptr))",
        "live_m = live_m & (offs_m <= tl.load(num_token_non_padded_ptr))",
    ),
    "shared_weight_swapped": (
        "shared_weight = 1.0 if APPLY_SCALE else 1.0 / routed_scaling_factor",
        "shared_weight = 1.0 / routed_scaling_factor if APPLY_SCALE else 1.0",
    ),
}


def cases():
    return [c for c in _real.cases() if c.name in CASES]


def edited(name: str):
    """SGLang's moe_fused_gate.py with the one line EDITS[name] changes, written to a file (Triton reads
    a kernel's source from its file) and imported."""
    mod_name = f"_planted_moe_fused_gate_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    old, new = EDITS[name]
    text = (require_root() / "sglang" / SOURCE).read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{SOURCE}: {old!r} occurs {text.count(old)} times, not once")
    file = _P(tempfile.mkdtemp(prefix="planted_moe_fused_gate_")) / f"{mod_name}.py"
    file.write_text(text.replace(old, new))
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def _planted(name: str):
    def run(t, case):
        w, ids = edited(name).moe_fused_gate(t["logits"], t["bias"], **_real._gate_args(t, case))
        return _real.canonical(w, ids, case.params["K"])

    return Path(f"planted.{name}", run)


# biased_topk_jit_kernel_impl runs the same kernel as sglang.triton: left to the op's own run (time)
PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton", "sglang.torch")] + [_planted(n) for n in EDITS]

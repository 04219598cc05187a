"""The real router top-k op, its CPU-runnable SGLang paths clean, and copies of SGLang's moe_fused_gate.py
with one line edited as a review could miss it: the square root dropped from the V4 sqrt-softplus, the
padding test off by one (`<=` for `<`), the fused shared slot's weight given the other branch's value.
Each must be flagged; the clean kernel must not be. The ties case shows SGLang's torch reference breaking
exact ties otherwise than its kernels' lowest-id rule."""

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

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
    """SGLang's moe_fused_gate.py with the one line EDITS[name] changes (a copy: Triton reads a kernel's
    source from its file)."""
    return load_by_path(SOURCE, edit=EDITS[name])


def _planted(name: str):
    def run(t, case):
        w, ids = edited(name).moe_fused_gate(t["logits"], t["bias"], **_real._gate_args(t, case))
        return _real.canonical(w, ids, case.params["K"])

    return Path(f"planted.{name}", run)


# biased_topk_jit_kernel_impl runs the same kernel as sglang.triton: left to the op's own run (time)
PATHS = [p for p in _real.PATHS if p.name in ("fp64", "sglang.triton", "sglang.torch")] + [_planted(n) for n in EDITS]

"""The real router GEMM op, its CPU-runnable SGLang path clean, and a copy of SGLang's bf16_fp32.py whose
torch branch drops the fp32 output (`torch.mm(x, y.t())` on the bf16 operands: bf16 logits, the router's
classic precision bug). It must be flagged; the clean path must not be."""

from pathlib import Path as _P

from harness.parity.op import Path, load_by_path, load_module

_real = load_module(_P(__file__).resolve().parents[2] / "kernels" / "router_gemm.py")
OP = "planted_router_gemm"
DTYPE, PRIMARY, TOLERANCE, cost = _real.DTYPE, _real.PRIMARY, _real.TOLERANCE, _real.cost
make_inputs = _real.make_inputs
SOURCE = "kernels/ops/gemm/bf16_fp32.py"
OLD = "    return torch.mm(x.float(), y.float().t())"
NEW = "    return torch.mm(x, y.t()).float()"


def cases():
    return [c for c in _real.cases() if "tiny" in c.tags]


def edited():
    return load_by_path(SOURCE, edit=(OLD, NEW))


def bf16_output(t, case):
    return {"logits": edited().linear_bf16_fp32(t["x"], t["weight"])}


PATHS = [p for p in _real.PATHS if not p.needs_cuda] + [Path("planted.bf16_output", bf16_output)]

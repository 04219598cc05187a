"""The real router GEMM op, its CPU-runnable SGLang path clean, and a copy of SGLang's bf16_fp32.py whose
torch branch drops the fp32 output (`torch.mm(x, y.t())` on the bf16 operands: bf16 logits, the router's
classic precision bug). It must be flagged; the clean path must not be."""

import importlib.util
import sys
import tempfile
from pathlib import Path as _P

from harness.parity.op import Path, load_module, require_root

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
    name = "_planted_router_gemm_bf16_fp32"
    if name in sys.modules:
        return sys.modules[name]
    text = (require_root() / "sglang" / SOURCE).read_text()
    if text.count(OLD) != 1:
        raise RuntimeError(f"{SOURCE}: {OLD!r} occurs {text.count(OLD)} times, not once")
    file = _P(tempfile.mkdtemp(prefix="planted_router_gemm_")) / f"{name}.py"
    file.write_text(text.replace(OLD, NEW))
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bf16_output(t, case):
    return {"logits": edited().linear_bf16_fp32(t["x"], t["weight"])}


PATHS = [p for p in _real.PATHS if not p.needs_cuda] + [Path("planted.bf16_output", bf16_output)]

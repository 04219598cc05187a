"""A TileLang kernel planted for the SM120 audit at the two block sizes of the original pull request:
the mHC split-k pre-norm GEMM's shape with `hidden_block=256` (over SM120's 101376 B of shared memory)
and with 128 (what the pull request moved SM120 to, and fits); and at 256 once more, defined inside a
cached factory as SGLang defines it."""

import importlib.util
from pathlib import Path as FilePath

import torch

from harness.parity.op import ORACLE, Case, Path, require

OP = "planted_tilelang"
DTYPE = "fp32"
PRIMARY = None
TOLERANCE = (0.0, 0.0)
HIDDEN, SPLIT_K = 16384, 16
KERNEL = FilePath(__file__).resolve().parent / "tilelang" / "splitk_sqrsum.py"


def cases():
    return [Case("t32", {"T": 32}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {
        "x": torch.randn(case.params["T"], HIDDEN, generator=gen).to(torch.bfloat16),
        "fn": torch.randn(32, HIDDEN, generator=gen),
    }


def oracle(t, case):
    return {"out": t["x"].double() @ t["fn"].double().T}


def metrics(outputs, oracle, inputs, case):
    return []  # planted for the audit, which never runs them: their outputs are not judged


def _splitk(hidden_block: int, factory: bool = False):
    def run(t, case):
        require("tilelang")
        spec = importlib.util.spec_from_file_location("planted_splitk_sqrsum", KERNEL)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if factory:
            kernel = module.splitk_stage_0_factory(HIDDEN, SPLIT_K, hidden_block=hidden_block)
        else:
            kernel = module.splitk_gemm_sqrsum(HIDDEN, SPLIT_K, hidden_block=hidden_block)
        out = torch.empty(SPLIT_K, t["x"].shape[0], 32)
        kernel(t["x"], t["fn"], out)
        return {"out": out.sum(0)}

    return run


PATHS = [
    Path(ORACLE, oracle, golden=True),
    Path("hidden_block_256", _splitk(256), needs_cuda=True),
    Path("hidden_block_128", _splitk(128), needs_cuda=True),
    Path("factory_hidden_block_256", _splitk(256, factory=True), needs_cuda=True),
]

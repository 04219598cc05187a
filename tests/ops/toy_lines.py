"""A toy op for the line coverage test (tests/test_coverage.py): y = 2x by a Triton kernel of a stand-in
SGLang source tree ($SM120_HARNESS_SGLANG_SRC), `sglang/toy.py`, whose NEGATE branch no case takes."""

import torch

from harness.parity.op import ORACLE, Case, Path, import_module

OP = "toy_lines"
DTYPE = "bf16"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)


def cases():
    return [Case("n5", {"n": 5}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], generator=gen)}


def oracle(t, case):
    return {"y": t["x"].double() * 2}


def sglang_triton(t, case):
    return {"y": import_module("sglang.toy").double(t["x"])}


PATHS = [Path(ORACLE, oracle, golden=True), Path("sglang.triton", sglang_triton)]

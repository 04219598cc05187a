"""A toy op for the tests of absence (tests/test_absence.py): y = 2x by SGLang functions of a stand-in
source tree ($SM120_HARNESS_SGLANG_SRC), each path asking for it in one way."""

import torch

from harness.parity.op import ORACLE, Case, Path, function, import_module

OP = "toy_moved"
DTYPE = "bf16"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)


def cases():
    return [Case("n4", {"n": 4}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], 8, generator=gen)}


def oracle(t, case):
    return {"y": t["x"].double() * 2}


def moved(t, case):
    """The op file knows both places the function has lived: the new one first."""
    return {"y": function("sglang.newplace:double", "sglang.oldplace:double")(t["x"])}


def by_attribute(t, case):
    """The module is there; the function may not be (an AttributeError in the op file)."""
    return {"y": import_module("sglang.oldplace").double(t["x"])}


def by_module(t, case):
    """A module the op file imports that may not be there (a ModuleNotFoundError in the op file)."""
    return {"y": import_module("sglang.reference").double(t["x"])}


def sglang_breaks(t, case):
    """SGLang's own module imports a sibling that does not exist: SGLang's failure, not an absence."""
    return {"y": import_module("sglang.broken").double(t["x"])}


def conflict(t, case):
    """Importing this SGLang module fails inside another installed package: an environment problem."""
    return {"y": import_module("sglang.conflict").double(t["x"])}


PATHS = [
    Path(ORACLE, oracle, golden=True),
    Path("moved", moved),
    Path("by_attribute", by_attribute),
    Path("by_module", by_module),
    Path("sglang_breaks", sglang_breaks),
    Path("conflict", conflict),
]

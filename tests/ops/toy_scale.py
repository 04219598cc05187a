"""A toy op for engine tests: y = 2x. Its paths misbehave on purpose, each in one way."""

import os
import signal
import time

import torch

from harness.parity.op import ORACLE, Case, Path, Unavailable

OP = "toy_scale"
DTYPE = "bf16"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)


def cases():
    return [Case(f"n{n}", {"n": n}, frozenset({"tiny"})) for n in (4, 8, 16)]


def make_inputs(case, gen):
    # TOY_INPUT_SCALE stands for an input generator changed without its case changing
    return {"x": torch.randn(case.params["n"], 8, generator=gen) * float(os.environ.get("TOY_INPUT_SCALE", "1"))}


def good(t, case):
    return {"y": t["x"] * 2}


def segfault_on_n8(t, case):
    if case.name == "n8":
        os.kill(os.getpid(), signal.SIGSEGV)
    return good(t, case)


def hang_on_n4(t, case):
    if case.name == "n4":
        time.sleep(3600)
    return good(t, case)


def raises(t, case):
    raise RuntimeError("planted failure")


def unavailable(t, case):
    raise Unavailable("planted: package missing")


def slow(t, case):
    time.sleep(float(os.environ.get("TOY_SLOW_S", "1.0")))
    return good(t, case)


def off_by_one_row(t, case):
    y = good(t, case)["y"].clone()
    y[1] += 1.0
    return {"y": y}


PATHS = [
    Path(ORACLE, lambda t, c: {"y": t["x"].double() * 2}, golden=True),
    Path("toy.golden", good, golden=True, archs=((8, 7),)),  # a golden kernel for a GPU no test machine has
    Path("good", good),
    Path("segfault", segfault_on_n8),
    Path("hang", hang_on_n4),
    Path("raises", raises),
    Path("unavailable", unavailable),
    Path("slow", slow),
    Path("off_by_one_row", off_by_one_row),
    Path("sm120_only", good, archs=((12, 0),)),
]

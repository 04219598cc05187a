"""A toy op for the scheduler's tests: each path takes a known time per case (TOY_UNIT_S scales it)
and drifts from the oracle by a known, path-specific amount."""

import os
import time

import torch

from harness.parity.op import ORACLE, Case, Path

OP = "toy_durations"
DTYPE = "fp32"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)
SECONDS = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}  # per path, over its two cases (the first runs twice)


def cases():
    return [Case(f"n{n}", {"n": n}, frozenset({"tiny"})) for n in (8, 16)]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], 8, generator=gen)}


def _path(name: str, scale: float) -> Path:
    def run(t, case):
        time.sleep(SECONDS[name] / 3 * float(os.environ.get("TOY_UNIT_S", "1")))
        return {"y": t["x"] * 2 * (1 + scale)}

    return Path(name, run)


PATHS = [
    Path(ORACLE, lambda t, c: {"y": t["x"].double() * 2}, golden=True),
    *(_path(name, 1e-6 * (i + 1)) for i, name in enumerate(SECONDS)),
]

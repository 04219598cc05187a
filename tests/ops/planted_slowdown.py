"""A planted slowdown for measuring the power of the timing statistics: y = 2x, computed by launching
the same elementwise kernel LAUNCHES times. PLANTED_SLOWDOWN=1.05 launches it 5% more often (21 times
instead of 20), a real 5% slower path with the same result, on a CPU or a GPU (captured in one CUDA
graph there, like any path). Used by benchmarks/aa_rate.py."""

import os

import torch

from harness.parity.op import ORACLE, Case, Path

OP = "planted_slowdown"
DTYPE = "fp32"
PRIMARY = "y"
TOLERANCE = (0.0, 0.0)
LAUNCHES = 20


def cases():
    return [
        Case("tiny_n65536", {"n": 1 << 16}, frozenset({"tiny"})),
        Case("gpu_n8388608", {"n": 1 << 23}, frozenset({"gpu"})),  # 32 MB a launch: tens of us on an H200
    ]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], generator=gen)}


def repeated(t, case):
    launches = round(LAUNCHES * float(os.environ.get("PLANTED_SLOWDOWN", "1")))
    y = torch.empty_like(t["x"])
    for _ in range(launches):
        torch.mul(t["x"], 2.0, out=y)
    return {"y": y}


PATHS = [
    Path(ORACLE, lambda t, c: {"y": t["x"].double() * 2}, golden=True),
    Path("repeated", repeated, note="the same kernel LAUNCHES x PLANTED_SLOWDOWN times"),
]

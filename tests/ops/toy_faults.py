"""A toy op for the fault-class tests (tests/test_fault_classes.py): y = 2x in bf16, and paths that are wrong in
the ways no drift figure shows. Each must be caught by the engine's own checks."""

import torch

from harness.parity.op import ORACLE, Case, Known, Path, guarded

OP = "toy_faults"
DTYPE = "bf16"
PRIMARY = "y"
TOLERANCE = (1e-3, 1e-3)
OUTPUTS = {"y": "bfloat16"}


def cases():
    return [Case("n16", {"n": 16}, frozenset({"tiny"})), Case("n4_edge", {"n": 4}, frozenset({"tiny"}))]


def make_inputs(case, gen):
    return {"x": torch.randn(case.params["n"], 8, generator=gen)}


def oracle(t, case):
    return {"y": t["x"].double() * 2}


def good(t, case):
    g = guarded(tuple(t["x"].shape), torch.bfloat16, t["x"].device)
    g.view.copy_(t["x"] * 2)
    return {"y": g.view, **g.result()}


def wrong_dtype(t, case):
    """fp32 where production takes bf16: closer to the fp64 oracle, not further."""
    return {"y": t["x"] * 2}


def stray_write(t, case):
    """Right values, and one element written past the buffer's end (an off-by-one tail mask)."""
    g = guarded(tuple(t["x"].shape), torch.bfloat16, t["x"].device)
    g.view.copy_(t["x"] * 2)
    flat = g.view.reshape(-1)
    torch.as_strided(flat, (1,), (1,), flat.storage_offset() + flat.numel()).fill_(1.0)
    return {"y": g.view, **g.result()}


_launches = [0]


def racy(t, case):
    """Another value in the low bits of one element on every launch, as a reduction whose order races
    gives."""
    y = (t["x"] * 2).to(torch.bfloat16)
    _launches[0] += 1
    bits = y.view(torch.int16).clone()
    bits[0, 0] ^= _launches[0] % 8  # another value on each call (a worker may call it more than twice)
    return {"y": bits.view(torch.bfloat16)}


def known_bad(t, case):
    """Wrong on the edge case only: a known finding the op file allowlists (KNOWN)."""
    y = (t["x"] * 2).to(torch.bfloat16)
    return {"y": y * 1.5 if case.name == "n4_edge" else y}


def expired_bad(t, case):
    """Wrong on the edge case, under an entry whose date has passed: it fails again."""
    return known_bad(t, case)


PATHS = [
    Path(ORACLE, oracle, golden=True),
    Path("good", good),
    Path("wrong_dtype", wrong_dtype),
    Path("stray_write", stray_write),
    Path("racy", racy),
    Path("known_bad", known_bad),
    Path("expired_bad", expired_bad),
]
KNOWN = [
    Known("known_bad", "n4_edge", "*calc_diff", "2999-12-31", "a planted finding, tracked as toy#1"),
    Known("expired_bad", "n4_edge", "*calc_diff", "2020-01-01", "a planted finding whose allowance ran out"),
]

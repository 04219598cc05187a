"""The contract of an op file in `kernels/`: what it declares, and nothing about how it is run. Op files
reach it through the op API (harness/parity/op.py); the engine reads it from here, without torch.

An op file defines, at module level:
    OP: str                     the op's name (the first part of every case key)
    DTYPE: str                  the precision its drift is judged at ("bf16", "fp8", "fp4", "fp4x2")
    PRIMARY: str | None         the output that carries the full drift metrics (other floating outputs get
                                max_abs); None where no output is a plain tensor to diff (top-k indices)
    TOLERANCE: (atol, rtol)     for `frac_outside_tol`
    cases() -> list[Case]
    make_inputs(case, gen) -> dict[str, Tensor]     on the CPU, from a seeded torch.Generator
    PATHS: list[Path]           implementations and goldens; exactly one golden is the fp64 oracle
and optionally
    valid_region(inputs, case) -> dict[str, BoolTensor]   per output, where drift is measured
    cost(case) -> (bytes, flops)                           the least traffic and work, for the roofline
    metrics(outputs, oracle, inputs, case) -> list[Metric]  what the standard drift cannot say (recall of a
                                top-k, exact match of ids, a tail's convention), against the fp64 oracle's outputs
    CEILINGS: dict[str, float]  the op's own limits, over the DTYPE defaults; for a metric whose `better` is
                                "higher" (a recall) the number is a floor
    COVERS: dict[str, str]      the SGLang functions its paths run, `module:qualname` -> what its cases leave
                                out ("" for nothing); read against kernels/inventory/ (harness/parity/coverage.py)
    OUTPUTS: dict[str, str]     each output production reads, and the dtype it takes it in ("bfloat16"): every
                                path's outputs are held to it (and to the oracle's shapes): `contract_violations`
    UNJUDGED: dict[str, str]    a figure `metrics()` reports that no limit judges, and why (the run page lists
                                every unjudged figure; one not named here fails the catalogue's test)
    KNOWN: list[Known]          known findings its cases expose in SGLang (a path that fails, a figure past its
                                limit on some cases), each until a date: the case keeps running everywhere,
                                the finding is shown as allowlisted and does not fail the run or the gate
                                until the date has passed
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DTYPE_NAMES", "Case", "Known", "Path", "Tensors"]

# torch dtype names an output can be declared in (OUTPUTS)
DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu",
    "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip

# Tensors are typed loosely: the engine itself never needs torch at import time.
Tensors = Mapping[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    params: Mapping[str, Any]
    tags: frozenset[str] = frozenset()

    def version(self, op: str) -> str:
        """Hash of the case definition: a changed case is 'not comparable', never a regression."""
        blob = json.dumps({"op": op, "name": self.name, "params": dict(self.params)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Path:
    """One way of computing the op: an SGLang implementation under test, or a golden reference.

    `run(inputs, case)` gets the inputs already on the worker's device and returns named outputs.
    `archs` lists exact compute capabilities, e.g. ((12, 0), (12, 1)); None means any device, the
    CPU included; an empty tuple would mean nowhere. `env` is set before the worker imports anything
    (SGLang reads several knobs once, at import).
    """

    name: str
    run: Callable[[Tensors, Case], Tensors]
    golden: bool = False
    archs: tuple[tuple[int, int], ...] | None = None
    needs_cuda: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    # for timing: set-up once, return the call that launches only the kernel; None times `run` whole
    timed: Callable[[Tensors, Case], Callable[[], Any]] | None = None

    def unsupported_reason(self, capability: tuple[int, int] | None) -> str | None:
        """Why this path cannot run on a device of `capability` (None: no GPU), else None."""
        want = ", ".join(f"sm_{a}{b}" for a, b in self.archs or ())
        if capability is None:
            if self.archs is not None:
                return f"needs a CUDA GPU: {want}"
            return "needs a CUDA GPU" if self.needs_cuda else None
        if self.archs is not None and tuple(capability) not in self.archs:
            return f"runs on {want}, this GPU is sm_{capability[0]}{capability[1]}"
        return None


@dataclass(frozen=True)
class Known:
    """A known finding: `path` (a name of PATHS), `case` and `metric` (fnmatch patterns over the op's case
    names and the metrics; `outcome` is the path's status), allowed until `until` (ISO date, inclusive)
    because of `why` (the upstream issue, what is wrong)."""

    path: str
    case: str
    metric: str
    until: str
    why: str

    def resolved(self, op: str) -> dict[str, str]:
        """As a run stores it and the judge and the gate read it: the case pattern with the op's prefix."""
        return {"case": f"{op}/{self.case}", "impl": self.path, "metric": self.metric, "until": self.until,
                "why": self.why}  # fmt: skip

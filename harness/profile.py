"""Suite profiles (TOML): what to run, with which paths, cases and ceilings. Every error names the
file and the field.

    name = "smoke"
    description = "..."
    [kernels]
    cases = "auto"          # "auto": tag "tiny" without a GPU, "flash" on one; or a list of tags/globs
    timeout_s = 600         # per case and path, JIT included
    seed = 0
    [kernels.ops.mla_sparse_decode]       # no [kernels.ops]: every op, every path
    impls = ["sglang.triton", "sglang.torch"]
    goldens = ["fp64", "flashinfer.fa2"]
    cases = ["tiny"]
    ceilings = { calc_diff = 1e-5 }       # a new threshold is one line
    tolerance = { atol = 1e-2, rtol = 1e-2 }
"""

from __future__ import annotations

import fnmatch
import hashlib
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.catalogue import Op
from harness.ceilings import default_ceilings
from harness.op import ORACLE, Case

# ceilings are upper limits, so only metrics where lower is better can carry one
CEILING_METRICS = {
    "calc_diff",
    "worst_row_calc_diff",
    "max_abs",
    "max_rel",
    "frac_outside_tol",
    "nonfinite_mismatch",
    "rmse",
    "rmse_ratio",
    # the SM120 audit's
    "shared_bytes",
    "registers",
    "spill_bytes",
    "forbidden_instructions",
}


class ProfileError(Exception):
    pass


@dataclass
class OpConfig:
    impls: list[str] | None = None
    goldens: list[str] | None = None
    cases: list[str] | None = None
    ceilings: dict[str, float] = field(default_factory=dict)
    tolerance: tuple[float, float] | None = None


@dataclass
class KernelsConfig:
    cases: str | list[str] | dict[str, list[str]] = "auto"
    timeout_s: float = 600.0
    seed: int = 0
    ops: dict[str, OpConfig] | None = None  # None: every op discovered
    timing: dict | None = None  # {"repeats", "warmup", "cuda_graph"}, on a GPU only


@dataclass
class Allow:
    """A known-flaky row the gate lets pass until a date: fnmatch patterns on case, impl and metric."""

    case: str
    impl: str
    metric: str
    until: str  # ISO date; the entry stops counting the day after
    why: str


@dataclass
class GateConfig:
    perf_regression: float = 0.05  # a significant slowdown (or throughput drop) past this fails
    drift_factor: float = 2.0  # drift this many times the baseline's fails
    gsm8k_floor: float | None = None  # an absolute accuracy floor, checked on the candidate
    allow: list[Allow] = field(default_factory=list)


@dataclass
class Profile:
    file: Path
    name: str
    description: str
    sha256: str
    kernels: KernelsConfig | None
    gate: GateConfig = field(default_factory=lambda: GateConfig())

    def manifest(self) -> dict[str, Any]:
        return {"file": str(self.file), "name": self.name, "sha256": self.sha256}


def _err(file: Path, where: str, msg: str) -> ProfileError:
    return ProfileError(f"{file}: {where}: {msg}")


def _check_keys(file: Path, where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _err(file, where, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _str_list(file: Path, where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(file, where, f"expected a list of strings, got {value!r}")
    return value


def _number(file: Path, where: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(file, where, f"expected a number, got {value!r}")
    if positive and value <= 0:
        raise _err(file, where, f"must be > 0, got {value!r}")
    return float(value)


def load_profile(file: Path | str) -> Profile:
    file = Path(file)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{file}: cannot read the profile: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{file}: not valid TOML: {exc}") from exc
    _check_keys(file, "top level", data, {"name", "description", "kernels", "gate"})
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise _err(file, "name", "required, a non-empty string")
    kernels = None
    if "kernels" in data:
        kernels = _kernels(file, data["kernels"])
    return Profile(
        file=file,
        name=data["name"],
        description=str(data.get("description", "")),
        sha256=hashlib.sha256(raw).hexdigest(),
        kernels=kernels,
        gate=_gate(file, data.get("gate", {})),
    )


def _gate(file: Path, t: Any) -> GateConfig:
    if not isinstance(t, dict):
        raise _err(file, "gate", "expected a table")
    _check_keys(file, "[gate]", t, {"perf_regression", "drift_factor", "gsm8k_floor", "allow"})
    cfg = GateConfig()
    for k in ("perf_regression", "drift_factor", "gsm8k_floor"):
        if k in t:
            setattr(cfg, k, _number(file, f"[gate].{k}", t[k], positive=True))
    for i, a in enumerate(t.get("allow", [])):
        where = f"[gate].allow[{i}]"
        if not isinstance(a, dict):
            raise _err(file, where, "expected { case, impl, metric, until, why }")
        _check_keys(file, where, a, {"case", "impl", "metric", "until", "why"})
        missing = {"case", "until", "why"} - set(a)
        if missing:
            raise _err(file, f"{where}.{sorted(missing)[0]}", "required")
        until = a["until"]
        try:
            until = date.fromisoformat(str(until)).isoformat()
        except ValueError as exc:
            raise _err(file, f"{where}.until", f"expected a date YYYY-MM-DD, got {until!r}") from exc
        cfg.allow.append(
            Allow(str(a["case"]), str(a.get("impl", "*")), str(a.get("metric", "*")), until, str(a["why"]))
        )
    return cfg


def _kernels(file: Path, t: Any) -> KernelsConfig:
    if not isinstance(t, dict):
        raise _err(file, "kernels", "expected a table")
    _check_keys(file, "[kernels]", t, {"cases", "timeout_s", "seed", "ops", "timing"})
    cfg = KernelsConfig()
    if "cases" in t:
        c = t["cases"]
        if isinstance(c, dict):  # per machine: { cpu = [...], gpu = [...] }
            _check_keys(file, "[kernels].cases", c, {"cpu", "gpu"})
            cfg.cases = {m: _str_list(file, f"[kernels].cases.{m}", c.get(m, [])) for m in ("cpu", "gpu")}
        else:
            cfg.cases = c if c == "auto" else _str_list(file, "[kernels].cases", c)
    if "timeout_s" in t:
        cfg.timeout_s = _number(file, "[kernels].timeout_s", t["timeout_s"], positive=True)
    if "seed" in t:
        if isinstance(t["seed"], bool) or not isinstance(t["seed"], int) or t["seed"] < 0:
            raise _err(file, "[kernels].seed", f"expected a non-negative integer, got {t['seed']!r}")
        cfg.seed = t["seed"]
    if "timing" in t:
        tm = t["timing"]
        if not isinstance(tm, dict):
            raise _err(file, "[kernels.timing]", "expected a table")
        _check_keys(file, "[kernels.timing]", tm, {"repeats", "warmup", "cuda_graph"})
        cfg.timing = {"repeats": 30, "warmup": 5, "cuda_graph": True}
        for k in ("repeats", "warmup"):
            if k in tm:
                if isinstance(tm[k], bool) or not isinstance(tm[k], int) or tm[k] < (1 if k == "repeats" else 0):
                    raise _err(
                        file,
                        f"[kernels.timing].{k}",
                        f"expected a {'positive' if k == 'repeats' else 'non-negative'} integer, got {tm[k]!r}",
                    )
                cfg.timing[k] = tm[k]
        if "cuda_graph" in tm:
            if not isinstance(tm["cuda_graph"], bool):
                raise _err(file, "[kernels.timing].cuda_graph", f"expected true or false, got {tm['cuda_graph']!r}")
            cfg.timing["cuda_graph"] = tm["cuda_graph"]
    if "ops" in t:
        if not isinstance(t["ops"], dict):
            raise _err(file, "[kernels].ops", "expected a table of op tables")
        cfg.ops = {name: _op(file, name, o) for name, o in t["ops"].items()}
    return cfg


def _op(file: Path, name: str, t: Any) -> OpConfig:
    where = f"[kernels.ops.{name}]"
    if not isinstance(t, dict):
        raise _err(file, where, "expected a table")
    _check_keys(file, where, t, {"impls", "goldens", "cases", "ceilings", "tolerance"})
    cfg = OpConfig()
    for key in ("impls", "goldens", "cases"):
        if key in t:
            setattr(cfg, key, _str_list(file, f"{where}.{key}", t[key]))
    if "ceilings" in t:
        if not isinstance(t["ceilings"], dict):
            raise _err(file, f"{where}.ceilings", "expected a table of metric = ceiling")
        for metric, v in t["ceilings"].items():
            if metric not in CEILING_METRICS and not metric.endswith((".max_abs", ".nonfinite_mismatch")):
                raise _err(
                    file,
                    f"{where}.ceilings.{metric}",
                    f"not a metric with a ceiling (known: {', '.join(sorted(CEILING_METRICS))}, <output>.max_abs)",
                )
            cfg.ceilings[metric] = _number(file, f"{where}.ceilings.{metric}", v)
    if "tolerance" in t:
        tol = t["tolerance"]
        if not isinstance(tol, dict) or set(tol) != {"atol", "rtol"}:
            raise _err(file, f"{where}.tolerance", "expected { atol = ..., rtol = ... }")
        cfg.tolerance = (
            _number(file, f"{where}.tolerance.atol", tol["atol"]),
            _number(file, f"{where}.tolerance.rtol", tol["rtol"]),
        )
    return cfg


@dataclass
class Selection:
    """What the profile asks of one op, resolved against the op file."""

    op: Op
    cases: list[Case]
    goldens: list[str]  # the oracle first
    impls: list[str]
    ceilings: dict[str, float]
    tolerance: tuple[float, float]
    listed_goldens: list[str] | None = None  # as the profile names them (what `golden capture` stores)


def select(profile: Profile, ops: dict[str, Op], *, has_gpu: bool, only: list[str] | None = None) -> list[Selection]:
    """Resolve the profile's kernel section against the discovered ops; unknown names are errors."""
    k = profile.kernels
    if k is None:
        return []
    file = profile.file
    wanted = k.ops if k.ops is not None else {name: OpConfig() for name in ops}
    for name in wanted:
        if name not in ops:
            raise _err(file, f"[kernels.ops.{name}]", f"unknown op {name!r} (known: {', '.join(sorted(ops))})")
    if only:
        for name in only:
            if name not in wanted:
                raise ProfileError(f"--only: op {name!r} is not in {file} (it has: {', '.join(sorted(wanted))})")
        wanted = {n: c for n, c in wanted.items() if n in only}
    out = []
    for name, cfg in wanted.items():
        op = ops[name]
        where = f"[kernels.ops.{name}]"
        impls = cfg.impls if cfg.impls is not None else list(op.impls)
        goldens = cfg.goldens if cfg.goldens is not None else list(op.goldens)
        for n in impls:
            if n not in op.impls:
                raise _err(file, f"{where}.impls", f"unknown implementation {n!r} (known: {', '.join(op.impls)})")
        for n in goldens:
            if n not in op.goldens:
                raise _err(file, f"{where}.goldens", f"unknown golden {n!r} (known: {', '.join(op.goldens)})")
        if ORACLE not in goldens:
            goldens = [ORACLE, *goldens]  # every drift figure is measured against the oracle
        goldens = [ORACLE] + [g for g in goldens if g != ORACLE]
        patterns = cfg.cases if cfg.cases is not None else k.cases
        if patterns == "auto":
            patterns = ["flash"] if has_gpu else ["tiny"]
        elif isinstance(patterns, dict):
            patterns = patterns["gpu" if has_gpu else "cpu"]
        all_cases = op.cases()
        cases = [c for c in all_cases.values() if any(p in c.tags or fnmatch.fnmatchcase(c.name, p) for p in patterns)]
        if not cases:
            raise _err(
                file,
                f"{where}.cases" if cfg.cases is not None else "[kernels].cases",
                f"{patterns} selects no case of {name} (tags: "
                f"{', '.join(sorted({t for c in all_cases.values() for t in c.tags}))})",
            )
        out.append(
            Selection(
                op=op,
                cases=cases,
                goldens=goldens,
                impls=impls,
                ceilings={**default_ceilings(op.dtype), **cfg.ceilings},
                tolerance=cfg.tolerance or op.tolerance,
                listed_goldens=cfg.goldens,
            )
        )
    return out

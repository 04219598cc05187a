"""Suite profiles (TOML): what to run, with which paths, cases and ceilings. Every error names the
file and the field.

    name = "smoke"
    description = "..."
    [kernels]
    cases = "auto"          # "auto": tag "tiny" without a GPU, "flash" on one; or a list of tags/globs
    timeout_s = 600         # per case and path, JIT included
    seed = 0
    slots = 1               # concurrent workers per device (each GPU, or the CPU)
    cache_dir = "..."       # JIT and input caches kept between runs (harness/cache.py)
    [kernels.ops.mla_sparse_decode]       # no [kernels.ops]: every op, every path
    impls = ["sglang.triton", "sglang.torch"]
    goldens = ["fp64", "flashinfer.fa2"]
    cases = ["tiny"]
    ceilings = { calc_diff = 1e-5 }       # a new threshold is one line
    tolerance = { atol = 1e-2, rtol = 1e-2 }

    [server]                # the SGLang server of the serving suites (or: run --server-url URL)
    model = "deepseek-ai/DeepSeek-V4-Flash"
    args = ["--tp", "2", "--cuda-graph-bs", "1", "2", "4", "8", "--mem-fraction-static", "0.95"]
    env = { SGLANG_SM120_FLASHMLA_BACKEND = "flashinfer" }
    [accuracy]              # GSM8K: lm-eval, the cookbook's few_shot_gsm8k, upstream's run_eval gate
    lm_eval = { questions = 1319, concurrency = 64 }
    cookbook = { questions = 200 }
    run_eval = { examples = 200, floor = 0.93 }
    [perf]                  # bench_serving: every shape x concurrency, `repeats` times
    concurrency = [1, 2, 4, 8, 16, 32, 64]
    shapes = [{ input = 128, output = 256 }, { input = 1024, output = 1024 }]
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

from harness.parity.catalogue import Op, Selection
from harness.results import metrics as M
from harness.results.gate import Allow, GateConfig
from harness.results.metrics import ORACLE
from harness.serving.bench import PerfConfig, Shape
from harness.serving.gsm8k import AccuracyConfig
from harness.serving.server import ServerConfig

# metrics that can carry a ceiling in any op; an op's CEILINGS add its own
CEILING_METRICS = M.ceiling_metrics()


class ProfileError(Exception):
    pass


@dataclass
class OpConfig:
    impls: list[str] | None = None
    goldens: list[str] | None = None
    cases: list[str] | dict[str, list[str]] | None = None  # per machine, as [kernels].cases
    ceilings: dict[str, float] = field(default_factory=dict)
    tolerance: tuple[float, float] | None = None


@dataclass
class KernelsConfig:
    cases: str | list[str] | dict[str, list[str]] = "auto"
    timeout_s: float = 600.0
    seed: int = 0
    ops: dict[str, OpConfig] | None = None  # None: every op discovered
    timing: dict | None = None  # {"repeats", "warmup", "cuda_graph", "on_cpu"}: on a GPU (on_cpu: the CPU too)
    slots: int = 1  # concurrent workers per device (each GPU, or the CPU); SM120_HARNESS_SLOTS overrides
    cache_dir: str | None = None  # harness/cache.py; SM120_HARNESS_CACHE overrides


@dataclass
class Profile:
    file: Path
    name: str
    description: str
    sha256: str
    kernels: KernelsConfig | None
    gate: GateConfig = field(default_factory=lambda: GateConfig())
    server: ServerConfig = field(default_factory=lambda: ServerConfig())
    accuracy: AccuracyConfig | None = None
    perf: PerfConfig | None = None

    @property
    def serving(self) -> bool:
        return self.accuracy is not None or self.perf is not None

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
    _check_keys(file, "top level", data, {"name", "description", "kernels", "gate", "server", "accuracy", "perf"})
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
        server=_server(file, data.get("server", {})),
        accuracy=_accuracy(file, data["accuracy"]) if "accuracy" in data else None,
        perf=_perf(file, data["perf"]) if "perf" in data else None,
    )


def _cases(file: Path, where: str, c: Any) -> list[str] | dict[str, list[str]]:
    """A list of tags and name globs, or one per machine: { cpu = [...], gpu = [...] }."""
    if isinstance(c, dict):
        _check_keys(file, where, c, {"cpu", "gpu"})
        return {m: _str_list(file, f"{where}.{m}", c.get(m, [])) for m in ("cpu", "gpu")}
    return _str_list(file, where, c)


def _int(file: Path, where: str, value: Any, *, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise _err(file, where, f"expected an integer >= {least}, got {value!r}")
    return value


def _table(file: Path, where: str, t: Any, allowed: set[str]) -> dict:
    if not isinstance(t, dict):
        raise _err(file, where, "expected a table")
    _check_keys(file, where, t, allowed)
    return t


def _server(file: Path, t: Any) -> ServerConfig:
    t = _table(file, "[server]", t, {"model", "args", "env", "command", "port", "ready_timeout_s", "secret"})
    cfg = ServerConfig()
    if "model" in t:
        if not isinstance(t["model"], str) or not t["model"]:
            raise _err(file, "[server].model", "expected the model path or Hugging Face id, a string")
        cfg.model = t["model"]
    if "args" in t:
        cfg.args = _str_list(file, "[server].args", t["args"])
    if "command" in t:
        cfg.command = _str_list(file, "[server].command", t["command"])
        if not cfg.command:
            raise _err(file, "[server].command", "must not be empty")
    if "env" in t:
        env = _table(file, "[server].env", t["env"], set(t["env"]) if isinstance(t["env"], dict) else set())
        for k, v in env.items():
            if not isinstance(v, str):
                raise _err(file, f"[server].env.{k}", f"expected a string, got {v!r}")
        cfg.env = dict(env)
    if "secret" in t:
        cfg.secret = _str_list(file, "[server].secret", t["secret"])
    if "port" in t:
        cfg.port = _int(file, "[server].port", t["port"], least=0)
    if "ready_timeout_s" in t:
        cfg.ready_timeout_s = _number(file, "[server].ready_timeout_s", t["ready_timeout_s"], positive=True)
    return cfg


def _accuracy(file: Path, t: Any) -> AccuracyConfig:
    t = _table(file, "[accuracy]", t, {"lm_eval", "cookbook", "run_eval", "timeout_s"})
    cfg = AccuracyConfig()
    if "timeout_s" in t:
        cfg.timeout_s = _number(file, "[accuracy].timeout_s", t["timeout_s"], positive=True)
    if "lm_eval" in t:
        w = "[accuracy].lm_eval"
        e = _table(file, w, t["lm_eval"], {"questions", "concurrency", "max_gen_toks"})
        cfg.lm_eval = {"questions": None, "concurrency": 64, "max_gen_toks": 512}
        for k in e:
            cfg.lm_eval[k] = _int(file, f"{w}.{k}", e[k])
    if "cookbook" in t:
        w = "[accuracy].cookbook"
        e = _table(file, w, t["cookbook"], {"questions", "parallel"})
        cfg.cookbook = {"questions": 200, "parallel": 128}
        for k in e:
            cfg.cookbook[k] = _int(file, f"{w}.{k}", e[k])
    if "run_eval" in t:
        w = "[accuracy].run_eval"
        e = _table(file, w, t["run_eval"], {"examples", "threads", "floor"})
        cfg.run_eval = {"examples": 200, "threads": 128, "floor": 0.93}
        for k in ("examples", "threads"):
            if k in e:
                cfg.run_eval[k] = _int(file, f"{w}.{k}", e[k])
        if "floor" in e:
            f = _number(file, f"{w}.floor", e["floor"])
            if not 0 <= f <= 1:
                raise _err(file, f"{w}.floor", f"an accuracy between 0 and 1, got {f}")
            cfg.run_eval["floor"] = f
    if not (cfg.lm_eval or cfg.cookbook or cfg.run_eval):
        raise _err(file, "[accuracy]", "names no evaluation (lm_eval, cookbook, run_eval)")
    return cfg


def _perf(file: Path, t: Any) -> PerfConfig:
    allowed = {"concurrency", "repeats", "shapes", "prompts_per_concurrency", "min_prompts", "backend", "seed"}
    t = _table(file, "[perf]", t, allowed | {"timeout_s"})
    cfg = PerfConfig()
    if "concurrency" in t:
        c = t["concurrency"]
        if not isinstance(c, list) or not c:
            raise _err(file, "[perf].concurrency", f"expected a non-empty list of integers, got {c!r}")
        cfg.concurrency = [_int(file, f"[perf].concurrency[{i}]", v) for i, v in enumerate(c)]
    for k in ("repeats", "prompts_per_concurrency", "min_prompts"):
        if k in t:
            setattr(cfg, k, _int(file, f"[perf].{k}", t[k]))
    _detects(file, "[perf].repeats", cfg.repeats)
    if "seed" in t:
        cfg.seed = _int(file, "[perf].seed", t["seed"], least=0)
    if "timeout_s" in t:
        cfg.timeout_s = _number(file, "[perf].timeout_s", t["timeout_s"], positive=True)
    if "backend" in t:
        if t["backend"] not in ("sglang", "sglang-oai", "sglang-oai-chat"):
            raise _err(file, "[perf].backend", f"one of sglang, sglang-oai, sglang-oai-chat; got {t['backend']!r}")
        cfg.backend = t["backend"]
    if "shapes" in t:
        if not isinstance(t["shapes"], list) or not t["shapes"]:
            raise _err(file, "[perf].shapes", "expected a non-empty list of { input = N, output = N }")
        cfg.shapes = []
        for i, sh in enumerate(t["shapes"]):
            w = f"[perf].shapes[{i}]"
            sh = _table(file, w, sh, {"input", "output", "name"})
            if "input" not in sh or "output" not in sh:
                raise _err(file, w, "needs input and output (token counts)")
            i_len, o_len = _int(file, f"{w}.input", sh["input"]), _int(file, f"{w}.output", sh["output"])
            cfg.shapes.append(Shape(str(sh.get("name", f"in{i_len}_out{o_len}")), i_len, o_len))
    return cfg


def _detects(file: Path, where: str, repeats: int) -> None:
    """Repeats too few for a comparison ever to tell a change from noise are an error, not a gate that
    cannot fail (harness/results/compare.py: the significance test, else its fallback rule)."""
    if repeats < M.FALLBACK_SAMPLES:
        need = M.fewest_samples(M.MANN_WHITNEY)
        raise _err(
            file,
            where,
            f"{repeats} repeat(s) can never show a change: Mann-Whitney needs {need} a side to reach "
            f"p<{M.ALPHA:g}, and the fallback rule ({M.FALLBACK_RULE}) {M.FALLBACK_SAMPLES}",
        )


def _gate(file: Path, t: Any) -> GateConfig:
    if not isinstance(t, dict):
        raise _err(file, "gate", "expected a table")
    keys = {"perf_regression", "drift_factor", "gsm8k_floor", "fail_on_preexisting", "allow", "allow_missing"}
    _check_keys(file, "[gate]", t, keys | {"subset_of"})
    cfg = GateConfig()
    for k in ("allow_missing", "subset_of"):
        if k in t:
            setattr(cfg, k, _str_list(file, f"[gate].{k}", t[k]))
    for k in ("perf_regression", "drift_factor", "gsm8k_floor"):
        if k in t:
            setattr(cfg, k, _number(file, f"[gate].{k}", t[k], positive=True))
    if "fail_on_preexisting" in t:
        if not isinstance(t["fail_on_preexisting"], bool):
            raise _err(file, "[gate].fail_on_preexisting", f"expected true or false, got {t['fail_on_preexisting']!r}")
        cfg.fail_on_preexisting = t["fail_on_preexisting"]
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
    _check_keys(file, "[kernels]", t, {"cases", "timeout_s", "seed", "ops", "timing", "slots", "cache_dir"})
    cfg = KernelsConfig()
    if "cases" in t:
        c = t["cases"]
        cfg.cases = c if c == "auto" else _cases(file, "[kernels].cases", c)
    if "timeout_s" in t:
        cfg.timeout_s = _number(file, "[kernels].timeout_s", t["timeout_s"], positive=True)
    if "seed" in t:
        if isinstance(t["seed"], bool) or not isinstance(t["seed"], int) or t["seed"] < 0:
            raise _err(file, "[kernels].seed", f"expected a non-negative integer, got {t['seed']!r}")
        cfg.seed = t["seed"]
    if "slots" in t:
        cfg.slots = _int(file, "[kernels].slots", t["slots"])
    if "cache_dir" in t:
        if not isinstance(t["cache_dir"], str) or not t["cache_dir"]:
            raise _err(file, "[kernels].cache_dir", f"expected a folder, a non-empty string; got {t['cache_dir']!r}")
        cfg.cache_dir = t["cache_dir"]
    if "timing" in t:
        tm = t["timing"]
        if not isinstance(tm, dict):
            raise _err(file, "[kernels.timing]", "expected a table")
        _check_keys(file, "[kernels.timing]", tm, {"repeats", "warmup", "cuda_graph", "on_cpu"})
        cfg.timing = {"repeats": 30, "warmup": 5, "cuda_graph": True, "on_cpu": False}
        for k in ("repeats", "warmup"):
            if k in tm:
                if isinstance(tm[k], bool) or not isinstance(tm[k], int) or tm[k] < (1 if k == "repeats" else 0):
                    raise _err(
                        file,
                        f"[kernels.timing].{k}",
                        f"expected a {'positive' if k == 'repeats' else 'non-negative'} integer, got {tm[k]!r}",
                    )
                cfg.timing[k] = tm[k]
        for k in ("cuda_graph", "on_cpu"):
            if k in tm:
                if not isinstance(tm[k], bool):
                    raise _err(file, f"[kernels.timing].{k}", f"expected true or false, got {tm[k]!r}")
                cfg.timing[k] = tm[k]
        _detects(file, "[kernels.timing].repeats", cfg.timing["repeats"])
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
    for key in ("impls", "goldens"):
        if key in t:
            setattr(cfg, key, _str_list(file, f"{where}.{key}", t[key]))
    if "cases" in t:
        cfg.cases = _cases(file, f"{where}.cases", t["cases"])
    if "ceilings" in t:
        if not isinstance(t["ceilings"], dict):
            raise _err(file, f"{where}.ceilings", "expected a table of metric = ceiling")
        for metric, v in t["ceilings"].items():
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
        for key in cfg.ceilings:
            known = CEILING_METRICS | {k.split(":")[-1] for k in op.ceilings}
            path, _, metric = key.rpartition(":")  # `<path>:<metric>` limits one path
            if path and path not in op.paths:
                raise _err(file, f"{where}.ceilings.{key}", f"no path {path!r} (paths: {', '.join(op.paths)})")
            if metric not in known and not metric.endswith((".max_abs", ".nonfinite_mismatch")):
                raise _err(
                    file,
                    f"{where}.ceilings.{key}",
                    f"not a metric with a limit (known: {', '.join(sorted(known))}, <output>.max_abs)",
                )
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
                ceilings={**op.ceilings, **cfg.ceilings},
                tolerance=cfg.tolerance or op.tolerance,
                listed_goldens=cfg.goldens,
            )
        )
    return out

"""The kernel parity suite: for each selected op, run the goldens then the implementations in
isolated workers, and measure each implementation's drift as its outputs arrive."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

from harness.parity import drift, goldens
from harness.parity.catalogue import Selection
from harness.parity.contract import Case
from harness.parity.guard import STRAY
from harness.parity.inputs import cached_inputs
from harness.parity.roofline import Timing, peaks, roofline
from harness.results import metrics as M
from harness.results.metrics import ORACLE
from harness.results.store import RunWriter, row
from harness.workers import schedule
from harness.workers.executor import Executor, Ran, Slots
from harness.workers.worker import Job, Result, output_file, run_path, worker_env

SUITE = "kernels"


@dataclass
class Settings:
    slots: Slots  # the device, its worker slots, a worker's time limit, the run's cancel flag
    seed: int
    on_result: Callable[[str, str, str, Result, list[dict]], None] = lambda *a: None
    golden_dir: Path | None = None  # stored goldens (harness/parity/goldens.py)
    golden_source: str = "auto"  # auto: live where the golden runs here, else stored; live; stored
    keep_outputs: Path | None = None  # where outputs stay after the run (golden capture), else a temp dir
    timing: dict | None = None  # profile's [kernels.timing]; applies on a CUDA device
    gpu_name: str | None = None
    inputs_dir: Path | None = None  # the input cache kept between runs (harness/cache.py)
    threads: int | None = None  # torch threads per worker, where slots share the CPU
    previous: tuple[str, dict[tuple[str, str], float]] | None = None  # (run id, unit seconds) to plan by
    schedule: dict = field(default_factory=dict)  # filled: the plan, and each slot's busy seconds

    @property
    def capability(self) -> tuple[int, int] | None:
        return self.slots.capability

    @property
    def cancelled(self) -> threading.Event:
        return self.slots.cancelled


def run_kernels(selections: list[Selection], writer: RunWriter, settings: Settings) -> None:
    """Every (op, path) of the selections is a unit of work, run on the first free slot, longest
    first (harness/workers/schedule.py). A result is measured once the goldens it is compared with are
    in, whichever slot ran them, so the figures do not depend on the order or the number of slots."""
    record = threading.Lock()  # one writer and one console for every slot
    with tempfile.TemporaryDirectory(prefix="sm120-harness-outputs-") as tmp:
        outdir = Path(settings.keep_outputs or tmp)
        ops = {sel.op.name: _OpRun(sel, writer, settings, outdir / sel.op.name, record) for sel in selections}
        prev_id, prev = settings.previous or (None, {})
        devices = settings.slots.devices
        ordered = schedule.plan([u for op in ops.values() for u in op.units()], prev, prev_id, len(devices))
        server_env = worker_env(None, settings.capability, None)
        ex: Executor[schedule.Unit] = Executor(
            settings.cancelled, devices, server_env, writer.artifacts / "workers" / "forkserver.log"
        )

        def after(ran: Ran[schedule.Unit]) -> None:  # its drift is measured as its goldens come: at the end
            rows = ops[ran.unit.op].unit_rows(ran.unit.path, _ran(ran), tuple(p for p in M.WALL_PARTS if p != "drift"))
            with record:
                writer.add(rows)

        ex.run(ordered, lambda u, device, forks: ops[u.op].run_unit(u.path, device, forks), after)
        if settings.cancelled.is_set():
            return
        for op in ops.values():
            op.flush()
        ran = [_ran(r) for r in ex.ran]
        rows = [r for d in ran for r in ops[d["op"]].unit_rows(d["path"], d, ("drift",))]
        with record:
            writer.add(rows)
        settings.schedule.update(
            slots=ex.labels,
            planned_from=f"run {prev_id}" if prev_id else "estimates",
            plan=[
                {"op": u.op, "path": u.path, "cases": u.cases, "estimate_s": u.estimate_s, "from": u.estimate_from}
                for u in ordered
            ],
            predicted_busy_s=dict(zip(ex.labels, schedule.predicted_busy(ordered, len(ex.labels)))),
            ran=sorted(ran, key=lambda d: d["start_s"]),
            busy_s=ex.busy,
            makespan_s=ex.makespan_s,
        )


def _ran(r: Ran[schedule.Unit]) -> dict:
    return {"op": r.unit.op, "path": r.unit.path, "slot": r.slot, "start_s": r.start_s, "seconds": r.seconds}


class _OpRun:
    def __init__(self, sel: Selection, writer: RunWriter, settings: Settings, outdir: Path, record: threading.Lock):
        self.sel, self.writer, self.s, self.outdir = sel, writer, settings, outdir
        self.op = sel.op
        self.record = record
        self.lock = threading.RLock()  # this op's state, shared by the slots running its paths
        self.golden_ok: dict[tuple[str, str], str] = {}  # (case, golden) -> input digest
        self.source: dict[tuple[str, str], str] = {}  # (case, golden) -> "live" or "stored:<date> <gpu>"
        self.times: dict[tuple[str, str], float] = {}  # (case, path) -> median us
        self.masks: dict[str, dict] = {}
        self.settled: dict[str, set[str]] = {}  # case -> the goldens recorded for it
        self.parked: dict[str, list[tuple[str, Result, dict | None]]] = {}  # case -> results awaiting goldens
        self.wall: dict[str, dict] = {}  # path -> seconds per part, summed over its cases
        self.inputs = Path(settings.inputs_dir or outdir)

    def units(self) -> list[schedule.Unit]:
        out = []
        for name in [*self.sel.goldens, *self.sel.impls]:
            path = self.op.paths[name]
            reason = path.unsupported_reason(self.s.capability)
            stored = path.golden and self.s.golden_dir is not None
            stored = stored and (self.s.golden_source == "stored" or (self.s.golden_source == "auto" and reason))
            runs = reason is None and (not stored or name == ORACLE)
            out.append(schedule.Unit(self.op.name, name, len(self.sel.cases), runs_worker=runs))
        return out

    def run_unit(self, name: str, slot: str | None, forks) -> None:
        self.wall.setdefault(name, {})
        self._run_path(name, slot, forks)

    def _row(self, case: Case, impl: str, metric: str, value: float, **kw) -> dict:
        return row(
            self.writer.run_id,
            SUITE,
            f"{self.op.name}/{case.name}",
            case.version(self.op.name),
            impl,
            metric,
            value,
            **kw,
        )

    def _run_path(self, name: str, slot: str | None, forks) -> None:
        path = self.op.paths[name]
        reason = path.unsupported_reason(self.s.capability)
        source = self.s.golden_source
        todo = list(self.sel.cases)
        if path.golden and self.s.golden_dir is not None and (source == "stored" or (source == "auto" and reason)):
            todo = self._replay(name, reason)
            # the fp64 oracle is ours and runs anywhere: with nothing of it stored, compute it
            if not (name == ORACLE and reason is None and todo):
                return
        if reason is not None:
            for case in todo:
                self._deliver(case, name, Result(case.name, f"skipped({reason})", 0.0))
            return
        env = worker_env(path, self.s.capability, slot)
        job = Job(
            op_file=str(self.op.file),
            path=name,
            cases=[c.name for c in todo],
            seed=self.s.seed,
            device="cpu" if self.s.capability is None else "cuda",
            outdir=str(self.outdir),
            timing=self.s.timing,
            inputs_dir=str(self.inputs),
            threads=self.s.threads,
        )
        log = self.writer.artifacts / "workers" / f"{self.op.name}.{name}.log"
        cases = {c.name: c for c in self.sel.cases}
        timeout_s, cancelled = self.s.slots.timeout_s, self.s.cancelled
        for result in run_path(job, timeout_s=timeout_s, log=log, env=env, cancelled=cancelled, forks=forks):
            if self.s.cancelled.is_set():
                return
            self._add_wall(name, result.detail.get("wall", {}))
            self._deliver(cases[result.case], name, result, result.detail.pop("timing", None))

    def _add_wall(self, name: str, wall: dict) -> None:
        """Sum a case's seconds into its path's parts: start-up, inputs, JIT (the first call's excess
        over a second call), the call, the timing (that second call, and the timed replays)."""
        w = self.wall.setdefault(name, {})
        call = wall.get("call_s", 0.0)
        jit = max(0.0, call - wall["steady_call_s"]) if "steady_call_s" in wall else 0.0
        parts = {
            "startup": wall.get("startup_s", 0.0),
            "inputs": wall.get("inputs_s", 0.0),
            "jit": jit,
            "call": call - jit,
            # the second call that measured the steady state is a timed replay too
            "timing": wall.get("timing_s", 0.0) + wall.get("steady_call_s", 0.0),
        }
        with self.lock:
            for k, v in parts.items():
                w[k] = w.get(k, 0.0) + v
            w["workers"] = w.get("workers", 0) + (1 if "started" in wall else 0)
            w["forked"] = w.get("forked", 0) + (1 if wall.get("started") == "forked" else 0)
            if "input_cache" in wall:
                key = "input_hits" if wall["input_cache"] == "hit" else "input_builds"
                w[key] = w.get(key, 0) + 1
            w["jit_measured"] = w.get("jit_measured", 0) + (1 if "steady_call_s" in wall else 0)

    def _deliver(self, case: Case, name: str, result: Result, timing: dict | None = None) -> None:
        """Measure and record a result as soon as what it is compared with is in: the oracle for a
        golden, every golden for an implementation; until then it waits."""
        with self.lock:
            self.parked.setdefault(case.name, []).append((name, result, timing))
            self._drain(case)

    def _needs(self, name: str, result: Result) -> set[str]:
        if result.status != "ok" or name == ORACLE:
            return set()
        return {ORACLE} if self.op.paths[name].golden else set(self.sel.goldens)

    def _drain(self, case: Case, force: bool = False) -> None:
        progress = True
        while progress:
            progress = False
            for item in list(self.parked.get(case.name, [])):
                name, result, timing = item
                if not force and not self._needs(name, result) <= self.settled.get(case.name, set()):
                    continue
                self.parked[case.name].remove(item)
                self._finish(case, name, result, timing)
                if self.op.paths[name].golden:
                    self.settled.setdefault(case.name, set()).add(name)
                progress = True

    def flush(self) -> None:
        """What still waits (a golden that never reported, after an error): measured with what is in."""
        with self.lock:
            for case in self.sel.cases:
                self._drain(case, force=True)

    def _finish(self, case: Case, name: str, result: Result, timing: dict | None) -> None:
        t0 = time.perf_counter()
        rows = self._measure(case, name, result) if result.status == "ok" else []
        if timing and result.status == "ok":
            rows += self._timing_rows(case, name, Timing(timing["samples_us"], timing["mode"]))
        w = self.wall.setdefault(name, {})
        w["drift"] = w.get("drift", 0.0) + time.perf_counter() - t0
        self._record(case, name, result, rows)

    def unit_rows(self, name: str, ran: dict, parts: tuple[str, ...]) -> list[dict]:
        """Where path `name`'s seconds went (suite kernels, case = the op): `parts` of M.WALL_PARTS, and
        the total with them. Never judged by compare or gate: they explain a slow run."""
        w = self.wall.get(name, {})
        if not w.get("workers") and not self.op.paths[name].golden:
            return []  # skipped here: nothing ran
        version = hashlib.sha256(",".join(c.version(self.op.name) for c in self.sel.cases).encode()).hexdigest()[:12]
        counts = {k: w.get(k, 0) for k in ("workers", "forked", "input_builds", "input_hits", "jit_measured")}
        detail = {**counts, "slot": ran["slot"], "golden": self.op.paths[name].golden}
        figures = {k: w.get(k, 0.0) for k in parts}
        if "drift" not in parts:
            figures = {"total": ran["seconds"], **figures}
        return [
            row(self.writer.run_id, SUITE, self.op.name, version, name, M.wall(p), v, unit="s", detail=detail)
            for p, v in figures.items()
        ]

    def _replay(self, name: str, live_reason: str | None) -> list[Case]:
        """Use the stored outputs of golden `name`, verified, in place of running it. Returns the cases
        with nothing stored; for the oracle they run live, for a golden kernel they are skipped."""

        why_stored = f"{live_reason}; " if live_reason else ""
        missing: list[Case] = []
        for case in self.sel.cases:
            try:
                found = goldens.lookup(
                    self.s.golden_dir,
                    op=self.op.name,
                    case=case.name,
                    case_version=case.version(self.op.name),
                    golden=name,
                    seed=self.s.seed,
                )
            except goldens.GoldenError as exc:
                self._deliver(case, name, Result(case.name, "failed", 0.0, detail={"error": str(exc)}))
                continue
            if isinstance(found, str):
                if name == ORACLE and live_reason is None and found.startswith("no stored golden"):
                    missing.append(case)
                else:
                    self._deliver(case, name, Result(case.name, f"skipped({why_stored}stored: {found})", 0.0))
                continue
            target = output_file(self.outdir, case.name, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found.file, target)
            m = found.manifest
            self.source[(case.name, name)] = f"stored:{m['date']} {m['gpu']}"
            result = Result(
                case.name, "ok", 0.0, m["input_digest"], {"captured": {k: m[k] for k in ("date", "gpu", "driver")}}
            )
            self._deliver(case, name, result)
        return missing

    def _record(self, case: Case, name: str, result: Result, rows: list[dict]) -> None:
        detail = {**result.detail, "digest": result.digest, "golden": self.op.paths[name].golden}
        if self.op.paths[name].golden and result.status == "ok":
            detail["source"] = self.source.setdefault((case.name, name), "live")
        outcome = self._row(case, name, M.OUTCOME, result.seconds, unit="s", status=result.status, detail=detail)
        with self.record:
            if self.s.cancelled.is_set():
                return
            self.writer.add([outcome, *rows])
            self.s.on_result(self.op.name, case.name, name, result, rows)

    def _timing_rows(self, case: Case, name: str, t: Timing) -> list[dict]:
        """time_us with its samples; GB/s, TFLOP/s and the fraction of the roofline where the op states
        its cost and the GPU's peaks are known; and the ratio to each golden kernel timed here."""
        self.times[(case.name, name)] = t.median_us
        rows = [
            self._row(
                case,
                name,
                M.TIME_US,
                t.median_us,
                unit="us",
                samples=t.samples_us,
                detail={"iqr_us": t.iqr_us, "mode": t.mode, "repeats": len(t.samples_us)},
            )
        ]
        cost = getattr(self.op.module, "cost", None)
        peak = peaks(self.s.gpu_name) if self.s.gpu_name else None
        if cost is not None and peak is not None:
            nbytes, flops = cost(case)
            r = roofline(t.median_us, nbytes, flops, peak)
            detail = {
                "bytes": nbytes,
                "flops": flops,
                "peak_gbps": peak[0],
                "peak_tflops": peak[1],
                "bw_frac": r["bw_frac"],
                "compute_frac": r["compute_frac"],
            }
            rows.append(self._row(case, name, M.GBPS, r[M.GBPS], unit="GB/s", better="higher", detail=detail))
            rows.append(self._row(case, name, M.TFLOPS, r[M.TFLOPS], unit="TFLOP/s", better="higher", detail=detail))
            rows.append(self._row(case, name, M.ROOFLINE_FRAC, r[M.ROOFLINE_FRAC], better="higher", detail=detail))
        if not self.op.paths[name].golden:
            for golden in self.sel.goldens:
                ref = self.times.get((case.name, golden))
                if golden != ORACLE and ref:
                    rows.append(self._row(case, name, M.TIME_RATIO, t.median_us / ref, reference=golden, unit="x"))
        return rows

    def _valid(self, case: Case) -> dict:
        if case.name not in self.masks:
            inputs = cached_inputs(self.op.module, self.op.name, case, self.s.seed, self.inputs)
            self.masks[case.name] = self.op.valid_region(inputs, case)
        return self.masks[case.name]

    def _engine_checks(self, case: Case, name: str, result: Result, outs: dict, ref: dict) -> list[dict]:
        """What every path of every op is held to: its outputs as the op's OUTPUTS declares production
        takes them (dtype, and the oracle's shape; the device the path ran on), and the same bits from each
        of the launches the worker made back to back (harness/parity/child.py)."""
        rows = []
        declared = getattr(self.op.module, "OUTPUTS", None)
        if declared is not None and not self.op.paths[name].golden:
            devices = result.detail.get("outputs", {})
            bad = []
            for out_name, dtype in declared.items():
                got = outs.get(out_name)
                if got is None:
                    bad.append(f"{out_name}: missing")
                    continue
                if str(got.dtype).removeprefix("torch.") != dtype:
                    bad.append(f"{out_name}: dtype {str(got.dtype).removeprefix('torch.')}, production takes {dtype}")
                if out_name in ref and tuple(got.shape) != tuple(ref[out_name].shape):
                    bad.append(f"{out_name}: shape {list(got.shape)}, the oracle's {list(ref[out_name].shape)}")
                device = devices.get(out_name, {}).get("device")
                ran_on = "cpu" if self.s.capability is None else "cuda"
                if device is not None and device != ran_on:
                    bad.append(f"{out_name}: on {device}, the path ran on {ran_on}")
            detail = {"violations": bad}
            rows.append(self._row(case, name, M.CONTRACT_VIOLATIONS, len(bad), unit="count", detail=detail))
        if STRAY in outs:  # a path that wrote into guarded buffers (harness/parity/guard.py)
            stray = int(outs[STRAY].sum())
            rows.append(self._row(case, name, M.STRAY_WRITES, stray, unit="count"))
        repeats = result.detail.get("repeats")
        if repeats and "mismatched" in repeats:
            rows.append(self._row(case, name, M.NONDETERMINISTIC, repeats["mismatched"], unit="count", detail=repeats))
        return rows

    def _measure(self, case: Case, name: str, result: Result) -> list[dict]:
        path = self.op.paths[name]
        if name == ORACLE:
            self.golden_ok[(case.name, name)] = result.digest
            return []
        oracle_digest = self.golden_ok.get((case.name, ORACLE))
        if oracle_digest is None:
            result.detail["note"] = "no drift: the fp64 oracle did not run for this case"
            return []
        if oracle_digest != result.digest:
            result.status = "skipped(not comparable: its inputs differ from the oracle's)"
            return []
        outs = load_file(str(output_file(self.outdir, case.name, name)))
        ref = load_file(str(output_file(self.outdir, case.name, ORACLE)))
        primary = self.op.primary
        if primary is not None and primary not in outs:
            result.status = "failed"
            result.detail["error"] = f"returned {sorted(outs)}, no {primary!r}"
            return []
        valid = self._valid(case)
        atol, rtol = self.sel.tolerance
        try:
            metrics = []
            if primary is not None:
                metrics = drift.drift(outs[primary], ref[primary], atol, rtol, valid.get(primary))
            for out_name in sorted(set(outs) & set(ref) - {primary}):
                if outs[out_name].is_floating_point():  # indices and ids are the op's metrics() to judge
                    metrics += drift.secondary_drift(out_name, outs[out_name], ref[out_name], valid.get(out_name))
            if hasattr(self.op.module, "metrics"):
                inputs = cached_inputs(self.op.module, self.op.name, case, self.s.seed, self.inputs)
                metrics += self.op.metrics(outs, ref, inputs, case)
        except (ValueError, KeyError) as exc:
            result.status = "failed"
            result.detail["error"] = f"output does not match the oracle's: {type(exc).__name__}: {exc}"
            return []
        oracle_source = {"reference_source": self.source.get((case.name, ORACLE), "live")}
        rows = self._engine_checks(case, name, result, outs, ref)
        rows += [
            self._row(
                case,
                name,
                m.name,
                m.value,
                reference=ORACLE,
                unit=m.unit,
                better=m.better,
                detail={**m.detail, **oracle_source},
            )
            for m in metrics
        ]
        if path.golden:
            self.golden_ok[(case.name, name)] = result.digest
            return rows
        if primary is None:
            return rows
        for golden in self.sel.goldens:
            if golden == ORACLE or self.golden_ok.get((case.name, golden)) != result.digest:
                continue
            g = load_file(str(output_file(self.outdir, case.name, golden)))[primary]
            v = valid.get(primary)
            src = {"reference_source": self.source.get((case.name, golden), "live")}
            calc, ratio = drift.calc_diff(outs[primary], g, v), drift.rmse_ratio(outs[primary], g, ref[primary], v)
            rows.append(self._row(case, name, M.CALC_DIFF, calc, reference=golden, detail=src))
            rows.append(self._row(case, name, M.RMSE_RATIO, ratio, reference=golden, unit="x", detail=src))
        return rows

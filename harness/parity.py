"""The kernel parity suite: for each selected op, run the goldens then the implementations in
isolated workers, and measure each implementation's drift as its outputs arrive."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

from safetensors.torch import load_file

from harness import drift
from harness import metrics as M
from harness.inputs import cached_inputs
from harness.op import ORACLE, Case
from harness.profile import Selection
from harness.roofline import Timing, peaks, roofline
from harness.store import RunWriter, row
from harness.worker import Job, Result, output_file, run_path, worker_env

SUITE = "kernels"


@dataclass
class Settings:
    capability: tuple[int, int] | None  # None: no GPU, Triton runs under its interpreter
    slots: list[str | None]  # CUDA_VISIBLE_DEVICES per concurrent worker; [None] on the CPU
    timeout_s: float
    seed: int
    on_result: Callable[[str, str, str, Result, list[dict]], None] = lambda *a: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    golden_dir: Path | None = None  # stored goldens (harness/goldens.py)
    golden_source: str = "auto"  # auto: live where the golden runs here, else stored; live; stored
    keep_outputs: Path | None = None  # where outputs stay after the run (golden capture), else a temp dir
    timing: dict | None = None  # profile's [kernels.timing]; applies on a CUDA device
    gpu_name: str | None = None


def run_kernels(selections: list[Selection], writer: RunWriter, settings: Settings) -> None:
    with tempfile.TemporaryDirectory(prefix="sm120-harness-outputs-") as tmp:
        outdir = Path(settings.keep_outputs or tmp)
        for sel in selections:
            if settings.cancelled.is_set():
                return
            _OpRun(sel, writer, settings, outdir / sel.op.name).run()


class _OpRun:
    def __init__(self, sel: Selection, writer: RunWriter, settings: Settings, outdir: Path):
        self.sel, self.writer, self.s, self.outdir = sel, writer, settings, outdir
        self.op = sel.op
        self.lock = threading.Lock()
        self.golden_ok: dict[tuple[str, str], str] = {}  # (case, golden) -> input digest
        self.source: dict[tuple[str, str], str] = {}  # (case, golden) -> "live" or "stored:<date> <gpu>"
        self.times: dict[tuple[str, str], float] = {}  # (case, path) -> median us
        self.masks: dict[str, dict] = {}

    def run(self) -> None:
        # goldens first (the oracle among them), so every implementation's result can be measured
        # the moment it arrives
        for phase in (self.sel.goldens, self.sel.impls):
            self._parallel(phase)

    def _parallel(self, names: list[str]) -> None:
        slots = self.s.slots
        if len(slots) == 1:
            for name in names:
                self._run_path(name, slots[0])
            return
        free: Queue = Queue()
        for slot in slots:
            free.put(slot)

        def unit(name: str) -> None:
            slot = free.get()
            try:
                self._run_path(name, slot)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(len(slots)) as ex:
            for f in [ex.submit(unit, n) for n in names]:
                f.result()

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

    def _run_path(self, name: str, slot: str | None) -> None:
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
                self._record(case, name, Result(case.name, f"skipped({reason})", 0.0), [])
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
        )
        log = self.writer.artifacts / "workers" / f"{self.op.name}.{name}.log"
        cases = {c.name: c for c in self.sel.cases}
        for result in run_path(job, timeout_s=self.s.timeout_s, log=log, env=env):
            if self.s.cancelled.is_set():
                return
            case = cases[result.case]
            timing = result.detail.pop("timing", None)
            rows = self._measure(case, name, result) if result.status == "ok" else []
            if timing and result.status == "ok":
                rows += self._timing_rows(case, name, Timing(timing["samples_us"], timing["mode"]))
            self._record(case, name, result, rows)

    def _replay(self, name: str, live_reason: str | None) -> list[Case]:
        """Use the stored outputs of golden `name`, verified, in place of running it. Returns the cases
        with nothing stored; for the oracle they run live, for a golden kernel they are skipped."""
        from harness import goldens

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
                self._record(case, name, Result(case.name, "failed", 0.0, detail={"error": str(exc)}), [])
                continue
            if isinstance(found, str):
                if name == ORACLE and live_reason is None and found.startswith("no stored golden"):
                    missing.append(case)
                else:
                    self._record(case, name, Result(case.name, f"skipped({why_stored}stored: {found})", 0.0), [])
                continue
            target = output_file(self.outdir, case.name, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found.file, target)
            m = found.manifest
            self.source[(case.name, name)] = f"stored:{m['date']} {m['gpu']}"
            result = Result(
                case.name, "ok", 0.0, m["input_digest"], {"captured": {k: m[k] for k in ("date", "gpu", "driver")}}
            )
            self._record(case, name, result, self._measure(case, name, result))
        return missing

    def _record(self, case: Case, name: str, result: Result, rows: list[dict]) -> None:
        detail = {**result.detail, "digest": result.digest, "golden": self.op.paths[name].golden}
        if self.op.paths[name].golden and result.status == "ok":
            detail["source"] = self.source.setdefault((case.name, name), "live")
        outcome = self._row(case, name, M.OUTCOME, result.seconds, unit="s", status=result.status, detail=detail)
        with self.lock:
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
            inputs = cached_inputs(self.op.module, self.op.name, case, self.s.seed, self.outdir)
            self.masks[case.name] = self.op.valid_region(inputs, case)
        return self.masks[case.name]

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
                inputs = cached_inputs(self.op.module, self.op.name, case, self.s.seed, self.outdir)
                metrics += self.op.metrics(outs, ref, inputs, case)
        except (ValueError, KeyError) as exc:
            result.status = "failed"
            result.detail["error"] = f"output does not match the oracle's: {type(exc).__name__}: {exc}"
            return []
        oracle_source = {"reference_source": self.source.get((case.name, ORACLE), "live")}
        rows = [
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

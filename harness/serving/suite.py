"""The serving suites of a run: one SGLang server, GSM8K accuracy, then the throughput sweep.

Every evaluation and every sweep point is a unit with an `outcome` row (wall seconds, status) and
its measurements, written the moment it ends. Each client runs under the profile's deadline
(`[accuracy] timeout_s` per evaluation, `[perf] timeout_s` per point and repeat; harness/serving/client.py):
one still running then is killed, its unit is `timeout` with the repeats it measured, and the run goes
on. An evaluation whose requests mostly failed or whose answers mostly had no number is `failed`,
the counts in its outcome's detail, never an accuracy (harness/serving/gsm8k.py, `mostly`). If the
server dies, what was measured stays, every unit not yet run is recorded `failed` with the end of the
server's log, and the run ends cleanly.
A resumed run (`run --resume RUN`) skips the units it already measured.

Rows (the schema compare, gate and report read):
    accuracy  gsm8k/<tool>        server  gsm8k_acc       samples: 1/0 per question where the tool gives them
    perf      perf/<shape>/c<N>   server  output_tok_s    samples: one per repeat; value: their median
                                          request_s, ttft_ms_{mean,median,p90,p99}, itl_ms_*, tpot_ms_*, e2e_ms_*
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.results import metrics as M
from harness.results.stats import wilson_interval
from harness.results.store import RunWriter, row
from harness.serving import bench, client, gsm8k
from harness.serving.bench import PerfConfig
from harness.serving.gsm8k import AccuracyConfig
from harness.serving.server import Server, ServerConfig, ServerError


class Profile(Protocol):
    """What the serving suites read of a profile (harness/profile.py)."""

    server: ServerConfig
    accuracy: AccuracyConfig | None
    perf: PerfConfig | None


IMPL = "server"


@dataclass
class Unit:
    suite: str  # "accuracy" or "perf"
    case: str
    version: str
    run: Callable[[Server], list[dict]]  # the unit's measurement rows; raises on failure


def _version(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def units(profile: Profile, writer: RunWriter, data_dir: Path | None) -> list[Unit]:
    """Every evaluation and sweep point the profile asks for, in the order they run."""
    out: list[Unit] = []
    art = writer.artifacts
    acc = profile.accuracy
    if acc is not None:
        log = art / "accuracy"
        # each returns its scores; lm-eval's strict and flexible match come from one evaluation
        evals = {
            "lm_eval": lambda srv, c: gsm8k.run_lm_eval(
                srv.url,
                srv.model_name,
                data_dir,
                questions=c["questions"],
                concurrency=c["concurrency"],
                max_gen_toks=c["max_gen_toks"],
                samples_out=log / "lm_eval_samples.jsonl",
                log=log / "lm_eval.log",
                timeout_s=acc.timeout_s,
            ),
            "cookbook": lambda srv, c: [
                gsm8k.run_cookbook(
                    srv.url,
                    data_dir,
                    questions=c["questions"],
                    parallel=c["parallel"],
                    log=log / "cookbook.log",
                    timeout_s=acc.timeout_s,
                )
            ],
            "run_eval": lambda srv, c: [
                gsm8k.run_upstream_gate(
                    srv.url,
                    srv.model_name,
                    data_dir,
                    examples=c["examples"],
                    threads=c["threads"],
                    log=log / "run_eval.log",
                    timeout_s=acc.timeout_s,
                )
            ],
        }
        for tool, evaluate in evals.items():
            cfg = getattr(acc, tool)
            if not cfg:
                continue
            ver = _version({"tool": tool, **cfg})

            def unit(server: Server, evaluate=evaluate, cfg=cfg, ver=ver) -> list[dict]:
                scores = evaluate(server, cfg)
                return [r for sc in scores for r in _accuracy_rows(writer, sc, ver, floor=cfg.get("floor"))]

            out.append(Unit("accuracy", f"gsm8k/{tool}", ver, unit))
    perf = profile.perf
    if perf is not None:
        for shape in perf.shapes:
            for c in perf.concurrency:
                n = max(perf.min_prompts, perf.prompts_per_concurrency * c)
                case = f"perf/{shape.name}/c{c}"
                ver = _version(
                    {"shape": [shape.input_len, shape.output_len], "c": c, "n": n, "b": perf.backend, "s": perf.seed}
                )
                out.append(
                    Unit(
                        "perf",
                        case,
                        ver,
                        lambda server, shape=shape, c=c, n=n, case=case, ver=ver: _perf_point(
                            writer, server, profile, shape, c, n, case, ver
                        ),
                    )
                )
    return out


def _accuracy_rows(writer: RunWriter, score: gsm8k.Score, version: str, floor: float | None = None) -> list[dict]:
    lo, hi = wilson_interval(round(score.accuracy * score.n), score.n) if score.n else (score.accuracy,) * 2
    detail = {**score.detail, "n": score.n, "wilson95": [lo, hi]}
    if floor is not None:
        detail["floor"] = floor
    return [
        row(
            writer.run_id,
            "accuracy",
            f"gsm8k/{score.name}",
            version,
            IMPL,
            M.GSM8K_ACC,
            score.accuracy,
            better=M.get(M.GSM8K_ACC).better,
            samples=score.samples,
            detail=detail,
        )
    ]


def _perf_point(
    writer: RunWriter, server: Server, profile: Profile, shape: bench.Shape, c: int, n: int, case: str, version: str
) -> list[dict]:
    perf = profile.perf
    folder = writer.artifacts / "perf"
    folder.mkdir(parents=True, exist_ok=True)
    results, errors = [], []
    commit = (writer.manifest.get("fingerprint") or {}).get("sglang_commit") or "unknown"
    status = "failed"
    for rep in range(perf.repeats):
        stem = f"{shape.name}.c{c}.r{rep}"
        out = folder / f"{stem}.jsonl"
        cmd = bench.command(
            server.url,
            shape,
            c,
            n,
            backend=perf.backend,
            seed=perf.seed,
            out=out,
            tag=f"run={writer.run_id},sglang={commit},{case},repeat={rep}",
        )
        try:
            results.append(bench.metrics(bench.run_point(cmd, out, folder / f"{stem}.log", perf.timeout_s, _env()), n))
        except bench.PointError as exc:
            errors.append(f"repeat {rep}: {exc}")
            if not server.alive():
                break
        except client.ClientTimeout as exc:
            # a server that stalled would stall the next repeat too: the repeats measured are kept
            errors.append(f"repeat {rep}: {exc}")
            status = "timeout"
            break
    rows = []
    if results:
        for metric in results[0]:
            samples = [r[metric] for r in results]
            spec = M.get(metric)
            rows.append(
                row(
                    writer.run_id,
                    "perf",
                    case,
                    version,
                    IMPL,
                    metric,
                    statistics.median(samples),
                    unit=spec.unit,
                    better=spec.better,
                    samples=samples,
                    detail={
                        "input_len": shape.input_len,
                        "output_len": shape.output_len,
                        "concurrency": c,
                        "num_prompts": n,
                        "backend": perf.backend,
                        "repeats_ok": len(results),
                    },
                )
            )
    if errors:
        raise PartialError("; ".join(errors), rows, status)
    return rows


class PartialError(Exception):
    """A unit that failed (or timed out: `status`) after measuring something: the rows are kept."""

    def __init__(self, msg: str, rows: list[dict], status: str = "failed"):
        super().__init__(msg)
        self.rows = rows
        self.status = status


def _env() -> dict[str, str]:
    # the client must not wait on the Hugging Face hub for a tokenizer the server names locally
    return {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}


def run_serving(
    profile: Profile,
    writer: RunWriter,
    *,
    server_url: str | None,
    data_dir: Path | None,
    done: set[str],
    cancelled: threading.Event,
    say: Callable[[str], None],
) -> None:
    """Run every unit not in `done` (cases already measured, on resume). A server that cannot be
    started or reached, and missing GSM8K data, raise (ServerError, gsm8k.DataError) after the units
    are recorded failed; the caller maps them to exit codes."""
    cfg = profile.server
    if server_url:
        cfg.url = server_url
    data = gsm8k.data_dir(data_dir) if profile.accuracy is not None else None
    todo = [u for u in units(profile, writer, data) if u.case not in done]
    if not todo:
        return

    def record(u: Unit, status: str, seconds: float, rows: list[dict], detail: dict) -> None:
        outcome = row(
            writer.run_id, u.suite, u.case, u.version, IMPL, M.OUTCOME, seconds, unit="s", status=status, detail=detail
        )
        writer.add([outcome, *rows])
        say(f"  {u.case:<40} {status}" + (f"  {detail['error'].splitlines()[0]}" if "error" in detail else ""))

    try:
        server = Server(cfg, writer.artifacts).__enter__()
    except ServerError as exc:
        for u in todo:
            record(u, "failed", 0.0, [], {"error": f"no server: {exc}"})
        raise
    try:
        writer.manifest["server"] = server.manifest()
        writer.save_manifest()
        say(f"server {server.url} ({'launched' if server.proc else 'attached'}), model {server.model_name}")
        for i, u in enumerate(todo):
            if cancelled.is_set():
                return
            t0 = time.monotonic()
            try:
                rows = u.run(server)
                record(u, "ok", time.monotonic() - t0, rows, {})
            except PartialError as exc:
                record(u, exc.status, time.monotonic() - t0, exc.rows, {"error": str(exc)})
            except client.ClientTimeout as exc:
                record(u, "timeout", time.monotonic() - t0, [], {"error": f"{type(exc).__name__}: {exc}"})
            except gsm8k.EvalError as exc:  # with the counts that failed it, where the tool tells them
                record(u, "failed", time.monotonic() - t0, [], {"error": f"{type(exc).__name__}: {exc}", **exc.counts})
            except Exception as exc:  # one evaluation's failure must not lose the others
                record(u, "failed", time.monotonic() - t0, [], {"error": f"{type(exc).__name__}: {exc}"})
            if not server.alive():
                # a server that dies under load is a finding about SGLang, not an infrastructure error
                note = server.death_note()
                say(f"the server died: {note}")
                for rest in todo[i + 1 :]:
                    record(rest, "failed", 0.0, [], {"error": f"not run: {note}"})
                return
    finally:
        server.stop()

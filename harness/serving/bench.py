"""One point of a throughput sweep: SGLang's own client, `python -m sglang.benchmark.serving`, at one
shape and one concurrency, and its result line read back.

Fixed lengths (`random-ids`, `--random-range-ratio 1.0`, no dataset download), a fixed seed, a
warm-up of one request per concurrent slot, and the prefix cache flushed after it, so repeats of a
point see the same requests in the same state. The client appends its JSON line (which may hold a
bare `Infinity`, hence Python's json) to a file of its own per point and repeat, kept in the run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.results import metrics as M
from harness.serving import client


@dataclass(frozen=True)
class Shape:
    name: str
    input_len: int
    output_len: int


@dataclass
class PerfConfig:
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    repeats: int = 3
    shapes: list[Shape] = field(
        default_factory=lambda: [Shape("in128_out256", 128, 256), Shape("in1024_out1024", 1024, 1024)]
    )
    # requests per point: enough waves that the ramp-up and the tail do not dominate
    prompts_per_concurrency: int = 8
    min_prompts: int = 16
    backend: str = "sglang"
    seed: int = 42
    timeout_s: float = 3600.0  # per point and repeat


class PointError(Exception):
    """The point produced no usable result; the message says why (the client's last lines)."""


def command(
    url: str, shape: Shape, concurrency: int, num_prompts: int, *, backend: str, seed: int, out: Path, tag: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sglang.benchmark.serving",
        "--backend",
        backend,
        "--base-url",
        url,
        "--dataset-name",
        "random-ids",
        "--random-input-len",
        str(shape.input_len),
        "--random-output-len",
        str(shape.output_len),
        "--random-range-ratio",
        "1.0",
        "--num-prompts",
        str(num_prompts),
        "--max-concurrency",
        str(concurrency),
        "--request-rate",
        "inf",
        "--warmup-requests",
        str(concurrency),
        "--flush-cache",
        "--seed",
        str(seed),
        "--disable-tqdm",
        "--tag",
        tag,
        "--output-file",
        str(out),
    ]


def run_point(cmd: list[str], out: Path, log: Path, timeout_s: float, env: dict[str, str]) -> dict:
    """Run the client once, under `timeout_s`; the parsed result line. A point where every request
    failed makes the client crash (numpy percentile of nothing): that, or fewer completed requests than
    sent, is a PointError; a client still running at `timeout_s` is killed (client.ClientTimeout)."""
    out.unlink(missing_ok=True)  # the client appends: a stale line must not pass for this run's
    code, text = client.run(cmd, name="bench_serving", log=log, timeout_s=timeout_s, env=env)
    lines = out.read_text().splitlines() if out.exists() else []
    if code != 0 or not lines:
        raise PointError(f"bench_serving exited with {code} and wrote no result:\n{client.tail(text, 12)}")
    return json.loads(lines[-1])


def metrics(result: dict, num_prompts: int) -> dict[str, float]:
    """Output tok/s, requests/s and the latency statistics, from one result line."""
    completed = int(result.get("completed") or 0)
    if completed != num_prompts:
        raise PointError(f"{num_prompts - completed} of {num_prompts} requests failed (completed {completed})")
    m = {M.OUTPUT_TOK_S: float(result["output_throughput"]), M.REQUEST_S: float(result["request_throughput"])}
    for key in M.LATENCIES:
        for stat in M.LATENCY_STATS:
            m[M.latency(key, stat)] = float(result[f"{stat}_{key}_ms"])
    return m

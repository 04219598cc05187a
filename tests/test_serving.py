"""The serving suites end to end: the real lm-eval, SGLang's few_shot_gsm8k, run_eval and
bench_serving clients against the loopback stand-in (tests/serve_stub.py), whose accuracy and speed
are set, so every figure the harness stores is checked against what the server was told to produce.
Then a server that misbehaves (answers that are not JSON, answers with no number, a stall): no
accuracy is scored from it and no client outlives its timeout. Then the server's lifecycle: a server
that dies mid-sweep, one that never gets ready, bad URLs, a port in use, data missing offline, and a
harness killed outright."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.results.store import load_run
from harness.serving.bench import PointError, metrics
from tests import serve_stub
from tests.conftest import ROOT, cli, needs_sglang, write_profile

DATA = Path(__file__).parent / "data" / "gsm8k"  # 60 test and 20 train questions of GSM8K (MIT)
RATE, TTFT_MS, ITL_MS = 0.7, 30.0, 20.0


def _questions() -> list[str]:
    return [json.loads(line)["question"] for line in (DATA / "test.jsonl").read_text().splitlines()]


def _needs_clients() -> None:
    needs_sglang()
    for mod in ("lm_eval", "transformers"):
        try:
            __import__(mod)
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail(f"{mod} is not installed; CI installs the serve extra (see README)")
            pytest.skip(f"{mod} is not installed (pip install -e '.[serve,sglang-cpu]')")


SMOKE = """
name = "serve-test"
[accuracy]
lm_eval = { questions = 40, concurrency = 8 }
cookbook = { questions = 20, parallel = 8 }
run_eval = { examples = 20, threads = 8, floor = 0.93 }
[perf]
concurrency = [1, 4]
repeats = 2
prompts_per_concurrency = 4
min_prompts = 4
shapes = [{ input = 32, output = 24 }]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _needs_clients()
    tmp = tmp_path_factory.mktemp("serve")
    url, stop = serve_stub.start_stub(
        gsm8k_data=str(DATA / "test.jsonl"), gsm8k_accuracy=RATE, ttft_ms=TTFT_MS, itl_ms=ITL_MS
    )
    try:
        prof = write_profile(tmp / "p.toml", SMOKE)
        args = ["run", "--suite", str(prof), "--store", str(tmp / "runs"), "--server-url", url, "--data-dir", str(DATA)]
        r = cli(args)
    finally:
        stop()
    run = load_run(next((tmp / "runs").iterdir()))
    return r, run


def _value(run, case: str, metric: str):
    m = run.measurements
    hit = m[(m["case"] == case) & (m["metric"] == metric)]
    assert len(hit) == 1, f"{case} {metric}: {len(hit)} rows"
    return hit.iloc[0]


def test_lm_eval_scores_exactly_the_questions_the_server_answered_right(served):
    _, run = served
    known = _questions()
    right = serve_stub.answered_right(known, RATE)
    for case in ("gsm8k/lm_eval", "gsm8k/lm_eval_flexible"):
        r = _value(run, case, "gsm8k_acc")
        # lm-eval asks the first 40 test questions; its per-question results are the stub's, one by one
        assert list(r["samples"]) == [float(x) for x in right[:40]], case
        assert r["value"] == pytest.approx(sum(right[:40]) / 40)


def test_sglang_scripts_score_what_the_server_was_set_to(served):
    _, run = served
    known = _questions()
    # few_shot_gsm8k evaluates lines[:n]; run_eval holds out the 5 shots and evaluates lines[5:5+n]
    cookbook = serve_stub.expected_accuracy(known[:20], known, RATE)
    upstream = serve_stub.expected_accuracy(known[5:25], known, RATE)
    assert _value(run, "gsm8k/cookbook", "gsm8k_acc")["value"] == pytest.approx(cookbook, abs=1e-3)
    assert _value(run, "gsm8k/run_eval", "gsm8k_acc")["value"] == pytest.approx(upstream, abs=1e-3)


def test_throughput_matches_the_servers_token_rate(served):
    _, run = served
    for c in (1, 4):
        r = _value(run, f"perf/in32_out24/c{c}", "output_tok_s")
        ideal = serve_stub.ideal_output_throughput(24, c, TTFT_MS, ITL_MS)
        assert len(r["samples"]) == 2
        # client, event loop and HTTP overhead only ever slow it down, and by little at these speeds
        assert 0.75 * ideal < r["value"] <= 1.02 * ideal, (c, r["value"], ideal)
        itl = _value(run, f"perf/in32_out24/c{c}", "itl_ms_median")["value"]
        assert ITL_MS * 0.95 < itl < ITL_MS * 1.5


def test_run_records_the_server_and_fails_the_upstream_floor(served):
    r, run = served
    assert run.manifest["server"]["version"] == serve_stub.SGLANG_VERSION
    assert (run.dir / "artifacts" / "server_info.json").is_file()
    answers = (run.dir / "artifacts" / "accuracy" / "lm_eval_samples.jsonl").read_text().splitlines()
    assert len(answers) == 2 * 40  # lm-eval's own record of every question, per filter
    assert set(run.manifest["suites"]) == {"accuracy", "perf"}
    outcomes = run.measurements[run.measurements["metric"] == "outcome"]
    assert set(outcomes["status"]) == {"ok"}
    # the stub answers 70% right: under upstream's 0.93 floor for run_eval, so the run fails (exit 1)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "gsm8k/run_eval" in r.stderr


def test_point_parser_rejects_partial_and_reads_infinity():
    line = json.loads('{"request_rate": Infinity, "completed": 7, "output_throughput": 1.0}')
    with pytest.raises(PointError, match="1 of 8 requests failed"):
        metrics(line, 8)


# --------------------------------------------------------------------------------- a misbehaving server


def _run_against(tmp: Path, profile: str, deadline_s: float, **stub):
    """`run` of `profile` attached to a stand-in misbehaving as `stub` says, every client real: what the
    command gave back, the run, and the run's wall seconds. A run still going at `deadline_s` has its
    server taken away (the stand-in stops), so that an unbounded client fails the test, not hang it."""
    url, stop = serve_stub.start_stub(gsm8k_data=str(DATA / "test.jsonl"), gsm8k_accuracy=RATE, **stub)
    watchdog = threading.Timer(deadline_s, stop)
    prof = write_profile(tmp / "p.toml", "name = 'misbehaving'\n" + profile)
    args = ["run", "--suite", str(prof), "--store", str(tmp / "runs"), "--server-url", url, "--data-dir", str(DATA)]
    t0 = time.monotonic()
    try:
        watchdog.start()
        r = cli(args)
    finally:
        watchdog.cancel()
        stop()
    wall = time.monotonic() - t0
    assert wall < deadline_s, f"the run took {wall:.0f} s: a client outlived its timeout"
    return r, load_run(next((tmp / "runs").iterdir())), wall


def _outcomes(run) -> dict[str, dict]:
    """Per case: its outcome's status, wall seconds and detail."""
    m = run.measurements[run.measurements["metric"] == "outcome"]
    return {
        c: {"status": s, "seconds": v, **json.loads(d or "{}")}
        for c, s, v, d in zip(m["case"], m["status"], m["value"], m["detail"])
    }


def _scored(run) -> list[str]:
    m = run.measurements
    return sorted(m[m["metric"] == "gsm8k_acc"]["case"])


def test_a_server_answering_invalid_json_fails_every_evaluation_with_the_count(tmp_path):
    """Every generation request answered 200 with a body that is not JSON: each GSM8K tool is `failed`
    with how many requests failed, none an accuracy of 0 (run_eval took it for one). run_eval retries
    each request six times with its own backoff (a minute)."""
    _needs_clients()
    profile = """
[accuracy]
lm_eval = { questions = 10, concurrency = 4 }
cookbook = { questions = 6, parallel = 6 }
run_eval = { examples = 4, threads = 4 }
"""
    r, run, _ = _run_against(tmp_path, profile, 480, broken="invalid_json")
    out = _outcomes(run)
    assert _scored(run) == []  # no gsm8k_acc row at all, not even 0.000
    assert {c: o["status"] for c, o in out.items()} == dict.fromkeys(
        ["gsm8k/lm_eval", "gsm8k/cookbook", "gsm8k/run_eval"], "failed"
    )
    # lm-eval gives the whole evaluation up when one request has failed its three tries
    lm = out["gsm8k/lm_eval"]
    assert lm["questions"] == 10 and lm["failed_tries"] >= 3 and "JSONDecodeError" in lm["error"], lm
    cookbook = out["gsm8k/cookbook"]
    assert (cookbook["requests_failed"], cookbook["questions"]) == (6, 6), cookbook
    assert "6 of 6 requests failed" in cookbook["error"]
    upstream = out["gsm8k/run_eval"]
    assert (upstream["requests_failed"], upstream["questions"]) == (4, 4), upstream
    assert "4 of 4 requests failed" in upstream["error"]
    assert r.returncode == 1 and run.status == "complete", r.stderr[-2000:]


def test_answers_with_no_number_fail_the_evaluation_with_the_count(tmp_path):
    """Well-formed answers with no number in them: nothing a scorer can read, so no accuracy either."""
    _needs_clients()
    profile = """
[accuracy]
lm_eval = { questions = 10, concurrency = 4 }
cookbook = { questions = 6, parallel = 6 }
"""
    r, run, _ = _run_against(tmp_path, profile, 300, broken="no_number")
    out = _outcomes(run)
    assert _scored(run) == []
    lm, cookbook = out["gsm8k/lm_eval"], out["gsm8k/cookbook"]
    assert lm["status"] == cookbook["status"] == "failed"
    assert (lm["unparsable"], lm["empty"], lm["questions"]) == (10, 0, 10), lm
    assert "10 of 10 answers had no number" in lm["error"]
    assert (cookbook["unparsable"], cookbook["requests_failed"], cookbook["questions"]) == (6, 0, 6), cookbook
    assert r.returncode == 1, r.stderr[-2000:]


def test_a_server_stalling_mid_evaluation_ends_each_as_timeout(tmp_path):
    """The stand-in hangs mid-response from its 4th request on: lm-eval (which took the run's whole
    outer timeout before) and few_shot_gsm8k each end at `[accuracy] timeout_s`, `timeout`, and the
    run goes on from one to the next and ends complete."""
    _needs_clients()
    timeout = 10
    profile = f"""
[accuracy]
timeout_s = {timeout}
lm_eval = {{ questions = 10, concurrency = 4 }}
cookbook = {{ questions = 4, parallel = 4 }}
"""
    r, run, _ = _run_against(tmp_path, profile, 120, stall_after=3)
    out = _outcomes(run)
    assert _scored(run) == []
    for case in ("gsm8k/lm_eval", "gsm8k/cookbook"):
        o = out[case]
        assert o["status"] == "timeout", (case, o)
        assert timeout <= o["seconds"] < timeout + 15, (case, o)  # ended by its deadline, soon after it
        assert f"did not finish within {timeout} s" in o["error"], (case, o)
    log = run.dir / "artifacts" / "accuracy" / "lm_eval.log"
    assert f"killed after {timeout} s" in log.read_text()  # what lm-eval printed is kept, and why it ends
    assert r.returncode == 1 and run.status == "complete", r.stderr[-2000:]


def test_a_stalled_sweep_point_is_timeout_and_keeps_what_was_measured(tmp_path):
    """The stand-in stalls in the second repeat of a sweep point: the point is `timeout` with the
    repeat it measured, and the evaluations measured before it keep their scores."""
    _needs_clients()
    timeout = 40  # a healthy repeat takes seconds; the one that stalls ends here
    profile = f"""
[accuracy]
cookbook = {{ questions = 4, parallel = 4 }}
run_eval = {{ examples = 4, threads = 4 }}
[perf]
timeout_s = {timeout}
concurrency = [1]
repeats = 2
prompts_per_concurrency = 4
min_prompts = 4
shapes = [{{ input = 16, output = 8 }}]
"""
    # few_shot_gsm8k sends its 4 questions and their shared prefix, run_eval its 4, a repeat of c1
    # 1 warm-up and 4 requests: request 15 is the second repeat's warm-up
    r, run, _ = _run_against(tmp_path, profile, 400, stall_after=5 + 4 + 5)
    out = _outcomes(run)
    assert out["gsm8k/cookbook"]["status"] == out["gsm8k/run_eval"]["status"] == "ok"
    assert _scored(run) == ["gsm8k/cookbook", "gsm8k/run_eval"]
    point = out["perf/in16_out8/c1"]
    assert point["status"] == "timeout", point
    assert f"repeat 1: bench_serving did not finish within {timeout} s" in point["error"]
    kept = _value(run, "perf/in16_out8/c1", "output_tok_s")
    assert kept["status"] == "ok" and len(kept["samples"]) == 1  # the first repeat's
    assert r.returncode == 1 and run.status == "complete", r.stderr[-2000:]


# ------------------------------------------------------------------------------------------ lifecycle

STUB = ["{python}", "-m", "tests.serve_stub", "--port", "{port}"]


def _profile(tmp: Path, command: list[str], extra: str = "", **server) -> Path:
    lines = [f"command = {json.dumps(command)}"] + [f"{k} = {json.dumps(v)}" for k, v in server.items()]
    body = "name = 'lifecycle'\n[server]\n" + "\n".join(lines) + "\n" + extra
    return write_profile(tmp / "p.toml", body)


SWEEP = """
[perf]
concurrency = [1, 2, 4, 8]
repeats = 2
prompts_per_concurrency = 1
min_prompts = 4
shapes = [{ input = 16, output = 8 }]
"""


def _procs_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(pid))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_server_dying_mid_sweep_keeps_what_was_measured_and_leaves_no_process(tmp_path):
    _needs_clients()
    marker = f"sleep {4000 + os.getpid() % 1000}"
    # a child in the server's process group stands for SGLang's scheduler processes
    stub = " ".join(STUB) + " --itl-ms 2 --die-after-requests 22"
    prof = _profile(tmp_path, ["sh", "-c", f"{marker} & exec {stub}"], SWEEP, port=0, ready_timeout_s=120)
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs")])
    run = load_run(next((tmp_path / "runs").iterdir()))
    out = run.measurements[run.measurements["metric"] == "outcome"].set_index("case")
    # two repeats of c1: 1 warm-up + 4 requests, of c2: 2 + 4; the 23rd request (in c4) kills it
    assert out.loc["perf/in16_out8/c1", "status"] == "ok"
    assert out.loc["perf/in16_out8/c2", "status"] == "ok"
    assert out.loc["perf/in16_out8/c4", "status"] == "failed"
    assert out.loc["perf/in16_out8/c8", "status"] == "failed"
    assert "not run: the server exited" in out.loc["perf/in16_out8/c8", "detail"]
    assert len(run.measurements.query("case == 'perf/in16_out8/c1' and metric == 'output_tok_s'")) == 1
    assert run.status == "complete" and r.returncode == 1, r.stderr[-2000:]
    assert not _procs_with(marker), "a process of the server's group outlived the run"


def test_server_never_ready_is_exit_3_with_the_reason(tmp_path):
    prof = _profile(tmp_path, [*STUB, "--never-ready"], SWEEP, port=0, ready_timeout_s=3)
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs")])
    assert r.returncode == 3, r.stderr[-2000:]
    assert "was not ready within 3 s" in r.stderr
    run = load_run(next((tmp_path / "runs").iterdir()))
    assert set(run.measurements["status"]) == {"failed"}  # every point recorded, none measured


def test_bad_url_and_nothing_listening(tmp_path):
    prof = write_profile(tmp_path / "p.toml", "name = 'x'\n" + SWEEP)
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs"), "--server-url", "localhost:30000"])
    assert r.returncode == 2 and "expected http://HOST:PORT" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs"), "--server-url", url])
    assert r.returncode == 3 and f"nothing answers at {url}" in r.stderr


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        prof = _profile(tmp_path, STUB, SWEEP, port=port)
        r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs")])
    assert r.returncode == 3 and f"port {port} on 127.0.0.1 is in use" in r.stderr


def test_missing_data_offline_says_to_pass_data_dir(tmp_path):
    prof = _profile(tmp_path, STUB, "[accuracy]\ncookbook = { questions = 5 }\n", port=0)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": ""}
    r = cli(["run", "--suite", str(prof), "--store", str(tmp_path / "runs")], env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "could not be downloaded" in r.stderr and "--data-dir" in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc")
def test_harness_killed_outright_takes_its_server_down(tmp_path):
    marker = f"sm120-kill-test-{os.getpid()}"
    prof = _profile(tmp_path, [*STUB, "--served-model-name", marker, "--startup-delay", "60"], SWEEP, port=0)
    p = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "--suite", str(prof), "--store", str(tmp_path / "runs")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not _procs_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _procs_with(marker), "the stand-in server never started"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 15
    while _procs_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _procs_with(marker), "the server outlived a harness killed with SIGKILL"


def test_resume_measures_nothing_twice_and_loses_nothing(tmp_path):
    """Measure lm-eval, then resume the run: nothing is measured again and nothing is lost, lm-eval's
    flexible-match row (which has no outcome of its own) included."""
    _needs_clients()
    url, stop = serve_stub.start_stub(gsm8k_data=str(DATA / "test.jsonl"), gsm8k_accuracy=RATE)
    try:
        prof = write_profile(tmp_path / "p.toml", "name = 'r'\n[accuracy]\nlm_eval = { questions = 10 }\n")
        args = ["run", "--suite", str(prof), "--store", str(tmp_path / "runs"), "--server-url", url]
        first = cli([*args, "--data-dir", str(DATA)])
        run_id = first.stdout.strip().splitlines()[-1]
        again = cli([*args, "--data-dir", str(DATA), "--resume", run_id])
    finally:
        stop()
    assert first.returncode == again.returncode == 0, again.stderr[-2000:]
    run = load_run(tmp_path / "runs" / run_id)
    m = run.measurements
    assert len(run.manifest["resumed"]) == 1
    assert sorted(m[m["metric"] == "gsm8k_acc"]["case"]) == ["gsm8k/lm_eval", "gsm8k/lm_eval_flexible"]
    assert len(m[m["metric"] == "outcome"]) == 1  # measured once, skipped on resume

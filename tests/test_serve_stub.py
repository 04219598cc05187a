"""The loopback SGLang stand-in (tests/serve_stub.py): its shapes, its exact accuracy, its lifecycle knobs.

The last tests drive it with the real clients (lm-eval, sglang's bench_serving and few_shot_gsm8k); they skip
where those are not importable. All data is synthetic and written under tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from tests import serve_stub as ss  # noqa: E402 - after the aiohttp skip
from tests.conftest import ROOT  # noqa: E402

# The scorers the stub's answers must satisfy, copied from their sources:
# lm_eval/tasks/gsm8k/gsm8k.yaml (filters and metric regexes_to_ignore),
# sglang/test/few_shot_gsm8k.py and sglang/test/simple_eval_mixed_prefix_gsm8k.py (get_answer_value).
LM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]


def lm_normalize(text: str) -> str:
    for pattern in LM_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_strict(response: str) -> str | None:
    m = LM_STRICT.search(response)
    return m.group(1) if m else None


def lm_flexible(response: str) -> str | None:
    matches = LM_FLEXIBLE.findall(response)
    if not matches:
        return None
    last = matches[-1]
    return next(g for g in last if g)


def few_shot_value(text: str) -> int | None:
    numbers = re.findall(r"\d+", text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def run_eval_value(text: str) -> float | None:
    numbers = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


# ------------------------------------------------------------------------------------------------ synthetic data


def synthetic_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    """GSM8K-shaped rows with the awkward cases of the real set: commas, a negative, "Questions" in reasoning."""
    rows = []
    for i in range(offset, offset + n):
        a, b = 3 + i, 4 + 2 * i
        if i % 7 == 3:
            a, b = 2000 + i, 125
        total = a + b
        shown = f"{total:,}"
        question = f"Ann  has {a} apples and buys {b} more on day {i}. How many apples does Ann have now?"
        answer = f"Ann has {a} + {b} = <<{a}+{b}={total}>>{total} apples.\n#### {shown}"
        if i % 11 == 5:
            question = f"It is 5 degrees at noon on day {i} and it falls by {8 + i} degrees. What is it now?"
            value = 5 - (8 + i)
            answer = f"Questions aside, 5 - {8 + i} = <<5-{8 + i}={value}>>{value}.\n#### {value}"
        rows.append({"question": question, "answer": answer})
    return rows


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return ss.write_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    d = tmp_path_factory.mktemp("gsm8k")
    rows = synthetic_rows(40)
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(8, offset=1000)))
    return d / "test.jsonl", rows


@pytest.fixture
def stub(tok_dir: str):
    """Factory: start an in-process stub with StubConfig options; all are stopped at teardown."""
    stops = []

    def start(**options: Any) -> str:
        options.setdefault("tokenizer_dir", tok_dir)
        url, stop = ss.start_stub(**options)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


# ---------------------------------------------------------------------------------------------------- HTTP


def http(url: str, body: Any = None, method: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read().decode(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw


def sse(url: str, body: Any, timeout: float = 10) -> list[Any]:
    """The `data:` payloads of a stream, JSON-decoded except the final [DONE]."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    events: list[Any] = []
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for line in resp:
            line = line.strip()
            if line.startswith(b"data: "):
                payload = line[6:].decode()
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def few_shot_prompt(rows: list[dict[str, str]], i: int, shots: int = 3) -> str:
    """few_shot_gsm8k's prompt: test lines 0..k-1 with answers, then line i (so shots may repeat it)."""
    shot = "".join(f"Question: {rows[j]['question']}\nAnswer: {rows[j]['answer']}\n\n" for j in range(shots))
    return shot + f"Question: {rows[i]['question']}\nAnswer:"


# ------------------------------------------------------------------------------------------------ pure model


def test_answered_right_is_exact_and_deterministic():
    questions = [r["question"] for r in synthetic_rows(40)]
    for rate in (0.0, 0.25, 0.5, 0.73, 0.9, 1.0):
        right = ss.answered_right(questions, rate, seed=5)
        assert sum(right) == round(rate * 40)
        assert right == ss.answered_right(questions, rate, seed=5)
    # Raising the rate only adds questions; another seed picks another subset.
    low, high = ss.answered_right(questions, 0.3, 1), ss.answered_right(questions, 0.6, 1)
    assert all(h for lo, h in zip(low, high) if lo)
    assert ss.answered_right(questions, 0.5, 1) != ss.answered_right(questions, 0.5, 2)
    # Whitespace does not make a question new.
    assert ss.answered_right(["a  b", "a b", "c"], 1 / 3, 0) in ([True, True, False], [False, False, False])
    assert (
        ss.expected_accuracy(questions[:10], questions, 0.5, 5) == sum(ss.answered_right(questions, 0.5, 5)[:10]) / 10
    )
    with pytest.raises(ValueError):
        ss.answered_right(questions, 1.5)


@pytest.mark.parametrize("right", [True, False])
def test_answer_text_satisfies_every_scorer(right: bool):
    for row in synthetic_rows(40):
        text = " " + ss.answer_text(row["answer"], right)
        target = lm_normalize(row["answer"])  # lm-eval's doc_to_target after regexes_to_ignore
        label = few_shot_value(row["answer"])
        assert (lm_normalize(lm_strict(text) or "") == target) is right
        assert (lm_normalize(lm_flexible(text) or "") == target) is right
        assert (few_shot_value(text) == label) is right
        assert (run_eval_value(text) == run_eval_value(row["answer"])) is right
        assert "Question" not in text and "Q:" not in text  # the clients' stop strings would cut it


def test_bank_finds_the_last_question(gsm8k):
    path, rows = gsm8k
    bank = ss.GSM8KBank.load(path, 0.5, 0)
    assert bank.find(few_shot_prompt(rows, 1)) == (1, "Question")  # line 1 is also a shot: the last one counts
    assert bank.find(few_shot_prompt(rows, 17)) == (17, "Question")
    assert bank.find(f"Q: {rows[4]['question']}\nA:") == (4, "Q")
    assert bank.find(rows[9]["question"]) == (9, None)
    assert bank.find(f"<|User|>{rows[12]['question']}<|Assistant|>") == (12, None)
    assert bank.find("Question: how many stubs does it take?\nAnswer:") is None
    assert bank.find("w5 w6 w7") is None


def test_plan_generation_stops_like_sglang():
    plan = ss.plan_generation(" one two\n\nQuestion: next", True, 100, ["Question"], False)
    assert plan.text == " one two\n\n" and plan.finish == {"type": "stop", "matched": "Question"}
    assert plan.completion_tokens == 3  # the token that completed the stop string counts
    plan = ss.plan_generation(" one two", True, 100, [], False)
    assert plan.text == " one two" and plan.finish == {"type": "stop", "matched": ss.EOS_TOKEN_ID}
    assert plan.completion_tokens == 3 and plan.ids[-1] == ss.EOS_TOKEN_ID
    plan = ss.plan_generation(" one two", True, 5, [], True)  # ignore_eos: filler up to the limit
    assert plan.completion_tokens == 5 and plan.finish == {"type": "length", "length": 5}
    assert plan.text.split()[:2] == ["one", "two"] and len(plan.text.split()) == 5
    plan = ss.plan_generation("", False, 0, [], False)
    assert plan.completion_tokens == 0 and plan.text == ""
    assert [plan.text_after(k) for k in range(2)] == ["", ""]


def test_ideal_output_throughput():
    assert ss.ideal_output_throughput(32, 4, 20, 10) == pytest.approx(4 * 32 / 0.33)
    assert ss.ideal_output_throughput(32, 8, 20, 10, max_running=2) == pytest.approx(2 * 32 / 0.33)


# ---------------------------------------------------------------------------------------------------- routes


def test_info_routes(stub, tok_dir: str):
    url = stub(served_model_name="dsv4", version="9.9.9")
    status, models = http(url + "/v1/models")
    assert status == 200 and models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == "dsv4" and card["owned_by"] == "sglang" and card["object"] == "model"
    assert set(card) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len"}
    assert http(url + "/v1/models/dsv4")[0] == 200
    status, err = http(url + "/v1/models/other")
    assert status == 404 and err["error"]["code"] == "model_not_found"
    keys = {
        "model_path", "served_model_name", "tokenizer_path", "is_generation", "preferred_sampling_params",
        "weight_version", "load_format", "reasoning_parser", "tool_call_parser", "disaggregation_mode",
        "has_image_understanding", "has_audio_understanding", "model_type", "architectures",
    }  # fmt: skip
    for path in ("/model_info", "/get_model_info"):
        status, info = http(url + path)
        assert status == 200 and set(info) == keys
        assert info["tokenizer_path"] == tok_dir == info["model_path"] and info["served_model_name"] == "dsv4"
    for path in ("/server_info", "/get_server_info"):
        status, info = http(url + path)
        assert status == 200 and info["version"] == "9.9.9" and info["frontend"] == "python"
        assert isinstance(info["internal_states"], list) and "last_gen_throughput" in info["internal_states"][0]
        assert "sglang.launch_server" in info["launch_command"] and info["port"] == int(url.rsplit(":", 1)[1])
    for method in ("GET", "POST"):
        status, text = http(url + "/flush_cache", body={} if method == "POST" else None, method=method)
        assert status == 200 and text.startswith("Cache flushed.")
    for path in ("/health", "/health_generate", "/ready"):
        assert http(url + path)[0] == 200


def test_completions_answer_gsm8k(stub, gsm8k):
    path, rows = gsm8k
    url = stub(gsm8k_data=str(path), gsm8k_accuracy=0.5, seed=3)
    right = ss.answered_right([r["question"] for r in rows], 0.5, 3)
    for i in range(12):
        body = {"model": "x", "prompt": few_shot_prompt(rows, i), "max_tokens": 256, "stop": ["Question:"]}
        status, out = http(url + "/v1/completions", body)
        assert status == 200 and out["object"] == "text_completion"
        choice = out["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["matched_stop"] == "Question:"
        assert "Question" not in choice["text"]
        assert (lm_normalize(lm_strict(choice["text"]) or "") == lm_normalize(rows[i]["answer"])) is right[i]
        usage = out["usage"]
        assert usage["completion_tokens"] == len(choice["text"].split()) + 1  # + the "Question:" token
        assert usage["prompt_tokens"] == len(body["prompt"].split())
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # A batch (lm-eval sends a list) answers each prompt under its index.
    prompts = [few_shot_prompt(rows, i) for i in (20, 21)]
    status, out = http(url + "/v1/completions", {"prompt": prompts, "max_tokens": 256, "stop": ["Question:"]})
    assert [c["index"] for c in out["choices"]] == [0, 1]
    # No stop strings: the model writes the next "Question:" and then EOS.
    status, out = http(url + "/v1/completions", {"prompt": few_shot_prompt(rows, 2), "max_tokens": 256})
    assert out["choices"][0]["text"].endswith("\n\nQuestion:") and out["choices"][0]["matched_stop"] == ss.EOS_TOKEN_ID


def test_completions_stream_shapes(stub):
    url = stub()
    body = {"prompt": "w3 w4 w5", "max_tokens": 6, "stream": True, "ignore_eos": True}
    events = sse(url + "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 6 and all(c["object"] == "text_completion" and c["usage"] is None for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 5 + ["length"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    status, out = http(url + "/v1/completions", {**body, "stream": False})
    assert text == out["choices"][0]["text"] and len(text.split()) == 6
    events = sse(url + "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    final = events[-2]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 6 and final["usage"]["prompt_tokens"] == 3


def test_chat_completions(stub, gsm8k):
    path, rows = gsm8k
    url = stub(gsm8k_data=str(path), gsm8k_accuracy=1.0)
    messages = [{"role": "user", "content": f"Question: {rows[6]['question']}\nAnswer:"}]
    status, out = http(url + "/v1/chat/completions", {"messages": messages, "max_tokens": 300})
    assert status == 200 and out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and lm_strict(msg["content"]) == final(rows[6])
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] > 0
    events = sse(url + "/v1/chat/completions", {"messages": messages, "max_tokens": 300, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks) == msg["content"]
    # max_completion_tokens, as bench_serving's sglang-oai-chat sends it.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4, "ignore_eos": True}
    assert http(url + "/v1/chat/completions", body)[1]["usage"]["completion_tokens"] == 4


def final(row: dict[str, str]) -> str:
    return row["answer"].split("####")[-1].strip()


def test_generate_native(stub, gsm8k):
    path, rows = gsm8k
    url = stub(gsm8k_data=str(path), gsm8k_accuracy=1.0)
    # bench_serving's sglang backend: cumulative text and meta_info.completion_tokens per chunk.
    body = {"text": "w7 w8", "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}, "stream": True}
    events = sse(url + "/generate", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["meta_info"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 5]
    assert all(chunks[k + 1]["text"].startswith(chunks[k]["text"]) for k in range(4))
    assert [c["meta_info"]["finish_reason"] for c in chunks][-2:] == [None, {"type": "length", "length": 5}]
    assert all(c["meta_info"]["prompt_tokens"] == 2 for c in chunks) and len(chunks[-1]["output_ids"]) == 5
    # few_shot_gsm8k's RuntimeEndpoint: non-stream, stop "Question".
    params = {"max_new_tokens": 512, "stop": ["Question", "Assistant:", "<|separator|>"], "temperature": 0}
    status, out = http(url + "/generate", {"text": few_shot_prompt(rows, 3), "sampling_params": params})
    assert status == 200 and few_shot_value(out["text"]) == few_shot_value(rows[3]["answer"])
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Question"}
    assert set(out) == {"text", "output_ids", "meta_info"}
    # Token ids in (--tokenize-prompt), a batch out, and the frontend's max_new_tokens=0 prefix call.
    status, out = http(url + "/generate", {"input_ids": [5, 6, 7, 8], "sampling_params": {"max_new_tokens": 2}})
    assert out["meta_info"]["prompt_tokens"] == 4 and out["meta_info"]["completion_tokens"] == 2
    status, outs = http(url + "/generate", {"text": ["w2", "w3 w4"], "sampling_params": {"max_new_tokens": 1}})
    assert [o["index"] for o in outs] == [0, 1] and [o["meta_info"]["prompt_tokens"] for o in outs] == [1, 2]
    status, out = http(url + "/generate", {"text": "w2 w3", "sampling_params": {"max_new_tokens": 0}})
    assert out["text"] == "" and out["meta_info"]["completion_tokens"] == 0


# ------------------------------------------------------------------------------------------- lifecycle knobs


def test_health_503_until_started(stub):
    url = stub(startup_delay=0.6)
    assert http(url + "/health")[0] == 503 and http(url + "/health_generate")[0] == 503
    assert http(url + "/v1/models")[0] == 200  # the HTTP side answers while the model warms up
    deadline = time.time() + 5
    while http(url + "/health")[0] != 200:
        assert time.time() < deadline
        time.sleep(0.1)
    assert http(url + "/health_generate")[0] == 200
    never = stub(never_ready=True)
    time.sleep(0.2)
    assert http(never + "/health")[0] == 503 and http(never + "/ready")[0] == 503


def test_fail_rate_is_an_exact_share(stub):
    url = stub(fail_rate=0.25)
    results = [http(url + "/v1/completions", {"prompt": "w2", "max_tokens": 1}) for _ in range(8)]
    assert [status for status, _ in results] == [200, 200, 200, 500] * 2  # floor(n * rate) of the first n
    error = results[3][1]
    assert error["object"] == "error" and error["code"] == 500 and error["type"] == "InternalServerError"
    assert http(url + "/stub/stats")[1]["failed"] == 2


def test_die_after_requests_in_process(stub):
    url = stub(die_after_requests=2)
    for _ in range(2):
        assert http(url + "/generate", {"text": "w2", "sampling_params": {"max_new_tokens": 1}})[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        http(url + "/generate", {"text": "w2", "sampling_params": {"max_new_tokens": 1}}, timeout=5)
    time.sleep(0.1)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        http(url + "/v1/models", timeout=5)


def test_broken_invalid_json_is_a_200_that_is_not_json(stub):
    url = stub(broken="invalid_json")
    for route, body in (
        ("/v1/completions", {"prompt": "w2", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w2"}], "max_tokens": 2}),
        ("/generate", {"text": "w2", "sampling_params": {"max_new_tokens": 2}}),
    ):
        status, raw = http(url + route, body)
        assert status == 200 and isinstance(raw, str), (route, raw)  # http() gives back what it cannot decode
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
    with pytest.raises(json.JSONDecodeError):  # a stream's events are cut short as well
        sse(url + "/v1/completions", {"prompt": "w2", "max_tokens": 2, "stream": True})
    assert http(url + "/v1/models")[0] == 200 and http(url + "/health_generate")[0] == 200  # only generation


def test_broken_no_number_answers_without_a_number(stub, gsm8k):
    path, rows = gsm8k
    url = stub(gsm8k_data=str(path), broken="no_number")
    body = {"prompt": few_shot_prompt(rows, 5), "max_tokens": 64, "stop": ["Question"]}
    status, out = http(url + "/v1/completions", body)
    assert status == 200 and out["choices"][0]["text"].strip() == ss.NO_NUMBER_ANSWER
    assert few_shot_value(out["choices"][0]["text"]) is None and lm_flexible(out["choices"][0]["text"]) is None


@pytest.mark.parametrize("stream", [False, True])
def test_stall_after_hangs_mid_response(stub, stream: bool):
    url = stub(stall_after=2)
    body = {"prompt": "w2", "max_tokens": 2, "stream": stream}
    for _ in range(2):
        assert http(url + "/v1/completions", {**body, "stream": False})[0] == 200
    req = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=2) as resp:  # the headers come: a 200
        assert resp.status == 200
        assert resp.read1(1 << 16)  # and the first bytes of the body
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):  # then nothing
            resp.read()
        assert time.monotonic() - t0 >= 1.5
    assert http(url + "/v1/models")[0] == 200  # the server itself still answers


def test_cli_prints_ready_and_dies_hard(tok_dir: str):
    cmd = [sys.executable, "-m", "tests.serve_stub", "--port", "0", "--tokenizer-dir", tok_dir]
    proc = subprocess.Popen([*cmd, "--die-after-requests", "2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"ready \d+\n", line), line
        url = f"http://127.0.0.1:{line.split()[1]}"
        body = {"prompt": "w2", "max_tokens": 2}
        assert [http(url + "/v1/completions", body)[0] for _ in range(2)] == [200, 200]
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            http(url + "/v1/completions", body, timeout=5)
        assert proc.wait(timeout=10) == ss.DIE_EXIT_CODE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_timing_and_max_running(stub):
    url = stub(ttft_ms=40, itl_ms=10, max_running=2)
    body = {"prompt": "w2", "max_tokens": 6, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    sse(url + "/v1/completions", body)
    alone = time.perf_counter() - t0
    assert 0.09 <= alone < 0.6  # 40 ms + 5 * 10 ms
    results: list[float] = []

    def one() -> None:
        t = time.perf_counter()
        http(url + "/v1/completions", {**body, "stream": False})
        results.append(time.perf_counter() - t)

    threads = [threading.Thread(target=one) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = http(url + "/stub/stats")[1]
    assert stats["max_running_seen"] == 2 and stats["max_waiting_seen"] >= 2
    assert wall >= 2 * 0.09  # two waves of two
    # the second wave waited for the first: about twice a request alone (the stub's steps are sleeps, and
    # a wave's end and the next one's start overlap by a scheduler tick)
    assert max(results) >= 1.8 * 0.09 and max(results) >= 1.6 * min(results)


def test_tokenizer_round_trips(stub):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    url = stub()
    tok = AutoTokenizer.from_pretrained(http(url + "/model_info")[1]["tokenizer_path"])
    assert tok.vocab_size == ss.VOCAB_SIZE and tok.num_special_tokens_to_add() == 0
    ids = [(4000 + j) % tok.vocab_size for j in range(300)]  # bench_serving random-ids, wrapping past 0 and 1
    text = tok.decode(ids)
    assert len(text.split()) == 300 and len(tok.encode(text, add_special_tokens=False)) == 300
    status, out = http(url + "/generate", {"text": text, "sampling_params": {"max_new_tokens": 9, "ignore_eos": True}})
    assert out["meta_info"]["prompt_tokens"] == 300
    assert len(tok.encode(out["text"], add_special_tokens=False)) == 9


def test_hand_written_tokenizer_loads(tmp_path: Path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    ss._write_tokenizer_json(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.vocab_size == ss.VOCAB_SIZE and len(tok.encode("w5 w6 [UNK] </s>", add_special_tokens=False)) == 4


# ----------------------------------------------------------------------------------------------- real clients


def _import_or_skip(module: str) -> Any:
    """Like pytest.importorskip, but a broken install (say a torchvision built for another torch) skips too."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means the client is not usable here
        pytest.skip(f"{module} is not importable: {type(e).__name__}: {e}")


def test_lm_eval_strict_match_is_exact(stub, gsm8k, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _import_or_skip("tenacity")  # lm-eval's API models need it (the lm-eval[api] extra)
    lm_eval = _import_or_skip("lm_eval")
    from lm_eval.tasks import TaskManager

    path, rows = gsm8k
    builtin = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "gsm8k_stub.yaml").write_text(
        f"include: {builtin}\ntask: gsm8k_stub\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {path.parent / 'train.jsonl'}\n    test: {path}\n"
        f"  cache_dir: {tmp_path / 'hf'}\n"
    )
    rate, n = 0.6, 16
    url = stub(gsm8k_data=str(path), gsm8k_accuracy=rate, seed=11)
    res = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": "stub",
            "base_url": url + "/v1/completions",
            "num_concurrent": 8,
            "tokenized_requests": False,
            "tokenizer_backend": None,
            "max_gen_toks": 256,
        },
        tasks=["gsm8k_stub"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        limit=n,
    )
    expected = sum(ss.answered_right([r["question"] for r in rows], rate, 11)[:n]) / n
    result = res["results"]["gsm8k_stub"]
    assert result["exact_match,strict-match"] == pytest.approx(expected)
    assert result["exact_match,flexible-extract"] == pytest.approx(expected)


def test_bench_serving_completes_near_ideal(stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    serving = _import_or_skip("sglang.benchmark.serving")
    ttft, itl, out_len, conc, n = 20.0, 10.0, 16, 4, 12
    url = stub(ttft_ms=ttft, itl_ms=itl)
    out = tmp_path / "bench.jsonl"
    for backend in ("sglang", "sglang-oai"):
        argv = [
            "bench", "--backend", backend, "--base-url", url, "--dataset-name", "random-ids",
            "--random-input-len", "32", "--random-output-len", str(out_len), "--random-range-ratio", "1.0",
            "--num-prompts", str(n), "--max-concurrency", str(conc), "--output-file", str(out), "--disable-tqdm",
        ]  # fmt: skip
        monkeypatch.setattr(sys, "argv", argv)
        serving.cli_main()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ideal = ss.ideal_output_throughput(out_len, conc, ttft, itl)
    for line in lines:
        assert line["completed"] == n and line["total_output_tokens"] == n * out_len
        assert line["total_output_tokens_retokenized"] == n * out_len
        assert 0.6 * ideal <= line["output_throughput"] <= 1.02 * ideal
        assert line["server_info"]["version"] == ss.SGLANG_VERSION


def test_few_shot_gsm8k_accuracy(stub, gsm8k, capsys: pytest.CaptureFixture[str]):
    few_shot = _import_or_skip("sglang.test.few_shot_gsm8k")
    import argparse

    path, rows = gsm8k
    url = stub(gsm8k_data=str(path), gsm8k_accuracy=0.4, seed=2)
    args = argparse.Namespace(
        num_shots=5, data_path=str(path), num_questions=20, max_new_tokens=512, parallel=8,
        host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), temperature=0.0,
    )  # fmt: skip
    cwd = os.getcwd()
    os.chdir(path.parent)  # it writes tmp_output_gsm8k.txt into the cwd
    try:
        metrics = few_shot.run_eval(args)
    finally:
        os.chdir(cwd)
    expected = sum(ss.answered_right([r["question"] for r in rows], 0.4, 2)[:20]) / 20
    assert metrics["accuracy"] == pytest.approx(expected) and metrics["invalid"] == 0

"""A loopback stand-in for an SGLang 0.5.23 server, for CI machines that cannot run the real one.

It speaks the routes the harness and its clients use, with SGLang's JSON shapes: the OpenAI-compatible
``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``, and the native ``/generate``, ``/model_info``,
``/server_info``, ``/health``, ``/health_generate``, ``/ready`` and ``/flush_cache`` (plus the deprecated
``/get_*`` aliases).

The "model" is deterministic so that tests can compute exactly what the clients should report:

* GSM8K: a prompt whose last question is a known test question is answered right for exactly
  ``round(rate * N)`` of the N known questions (picked by a seeded hash, see :func:`answered_right`) and wrong
  for the rest. Answers end in ``The answer is N.`` and ``#### N``, so lm-eval's strict-match and
  flexible-extract, ``few_shot_gsm8k`` and ``run_eval`` all read the same number.
* Tokens: whitespace-separated words. Generation runs to ``max_tokens`` / ``max_new_tokens`` (an answer ends
  earlier at EOS or a stop string unless ``ignore_eos``), one token every ``itl_ms`` after ``ttft_ms``, with at
  most ``max_running`` requests generating at once; see :func:`ideal_output_throughput`.
* Tokenizer: a word-level HF tokenizer written at start; ``/model_info`` returns its directory as
  ``tokenizer_path`` so bench_serving's ``random-ids`` prompts decode and count consistently.
* Lifecycle knobs: a startup delay (health 503), never ready, exit hard after N requests, a share of 500s.
* Misbehaviour at the protocol boundary, as a broken server or proxy shows it to every client alike:
  ``broken="invalid_json"`` answers each generation request 200 with a body cut short (not JSON; a stream's
  events likewise), ``broken="no_number"`` answers well-formed but with no number in the text (nothing a
  GSM8K scorer can read), and ``stall_after=N`` leaves every generation request after the N-th hanging
  mid-response (headers and the first bytes of the body sent, then nothing) until the stub stops.

Run it as ``python -m tests.serve_stub --port 0 [options]`` (prints ``ready <port>`` once listening), or in
process with :func:`start_stub`, which returns ``(url, stop)``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

SGLANG_VERSION = "0.5.23"
DEFAULT_MODEL_NAME = "deepseek-ai/DeepSeek-V4-Flash"
# Exit status of --die-after-requests, so a test can tell the planted death from a crash.
DIE_EXIT_CODE = 86

# Word-level vocabulary: id 0 is [UNK], id 1 the EOS token (DeepSeek's EOS id is 1 too), then filler words.
VOCAB_SIZE = 4096
UNK_TOKEN, EOS_TOKEN, EOS_TOKEN_ID = "[UNK]", "</s>", 1
FIRST_WORD_ID = 2

# SGLang's own defaults when a request leaves the length out: CompletionRequest.max_tokens is 16 and
# SamplingParams.max_new_tokens is 128; chat runs to the context length, bounded here.
DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_GENERATE_MAX_NEW_TOKENS = 128
DEFAULT_CHAT_MAX_TOKENS = 4096

# StubConfig.broken: a 200 whose body is not JSON; an answer with no number in it.
BROKEN = ("invalid_json", "no_number")
# What a model that cannot do the task writes instead of an answer (no digit: no scorer reads a number).
NO_NUMBER_ANSWER = "I am not able to work that out."


# --------------------------------------------------------------------------------------------------- GSM8K model


def normalize_question(text: str) -> str:
    """Whitespace-insensitive key: prompt templates may re-space the question text."""
    return " ".join(text.split())


def _question_rank(question: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{normalize_question(question)}".encode()).hexdigest()


def answered_right(questions: Sequence[str], rate: float, seed: int = 0) -> list[bool]:
    """Which of `questions` (the stub's whole known list, e.g. every test.jsonl question) it answers right.

    Exactly ``round(rate * N)`` of the N distinct questions are right (Python's round, half to even): the ones
    whose seeded hash ranks lowest. The result is aligned with `questions`, so a test's expected accuracy over
    the questions a client asks is the mean of the matching slice.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    distinct = sorted({normalize_question(q) for q in questions}, key=lambda q: _question_rank(q, seed))
    right = set(distinct[: round(rate * len(distinct))])
    return [normalize_question(q) in right for q in questions]


def expected_accuracy(asked: Sequence[str], known: Sequence[str], rate: float, seed: int = 0) -> float:
    """The accuracy a client should report when it asks `asked`, out of the stub's `known` questions."""
    right = {normalize_question(q) for q, ok in zip(known, answered_right(known, rate, seed)) if ok}
    return sum(normalize_question(q) in right for q in asked) / len(asked) if asked else 0.0


def final_answer(reference_answer: str) -> str:
    """The ``#### N`` part of a GSM8K reference answer, as written (it may hold commas or a sign)."""
    return reference_answer.split("####")[-1].strip()


def wrong_number(answer: str) -> str:
    """A number every scorer reads as different: lm-eval compares strings, few_shot_gsm8k drops the sign."""
    try:
        value = float(answer.replace(",", "").replace("$", ""))
    except ValueError:
        return "7"
    return str(int(abs(value)) + 1)


def answer_text(reference_answer: str, right: bool) -> str:
    """The body a model would write after ``Answer:``: the reference reasoning, then the (possibly wrong) result.

    ``Question`` and ``Q:`` inside the reasoning are lowercased, as they are the clients' stop strings and would
    cut a right answer short (test line 139's reasoning starts with "Questions").
    """
    reasoning = reference_answer.split("####")[0].strip()
    reasoning = reasoning.replace("Question", "question").replace("Q:", "q:")
    number = final_answer(reference_answer) if right else wrong_number(final_answer(reference_answer))
    return f"{reasoning}\nThe answer is {number}.\n#### {number}"


# The last "Question: ...\nAnswer:" (lm-eval gsm8k, few_shot_gsm8k, run_eval) or "Q: ...\nA:" (lm-eval gsm8k_cot).
_QUESTION_RE = re.compile(r"(Question|Q)\s*:\s*(.*?)\s*\n\s*(?:Answer|A)\s*:", re.S)


class GSM8KBank:
    """The known test questions and which of them the stub answers right."""

    def __init__(self, rows: Sequence[dict[str, str]], rate: float, seed: int) -> None:
        self.rows = list(rows)
        questions = [r["question"] for r in self.rows]
        self.right = answered_right(questions, rate, seed)
        self.index = {normalize_question(q): i for i, q in enumerate(questions)}

    @classmethod
    def load(cls, path: str | os.PathLike[str], rate: float, seed: int) -> GSM8KBank:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return cls(rows, rate, seed)

    def find(self, prompt: str) -> tuple[int, str | None] | None:
        """(row, marker) of the prompt's last question, or None. Marker is "Question"/"Q" when templated."""
        matches = list(_QUESTION_RE.finditer(prompt))
        if matches:
            # Only the last one: the earlier ones are few-shot examples, which may be test questions too.
            last = matches[-1]
            row = self.index.get(normalize_question(last.group(2)))
            return (row, last.group(1)) if row is not None else None
        row = self.index.get(normalize_question(prompt))
        if row is not None:
            return row, None
        # A bare question in some other wrapping (a chat template): the known question that ends last.
        flat = normalize_question(prompt)
        best, best_end = None, -1
        for key, i in self.index.items():
            at = flat.rfind(key)
            if at >= 0 and at + len(key) > best_end:
                best, best_end = i, at + len(key)
        return (best, None) if best is not None else None

    def answer(self, row: int) -> str:
        return answer_text(self.rows[row]["answer"], self.right[row])


# -------------------------------------------------------------------------------------------- token generation


def split_tokens(text: str) -> list[str]:
    """Whitespace "tokens", each keeping its leading whitespace so that joining them gives the text back."""
    return re.findall(r"\s*\S+", text)


def count_tokens(text: str) -> int:
    return len(text.split())


def filler_token(k: int) -> tuple[str, int]:
    """The k-th token of text that is no answer: vocabulary words, so a re-tokenization counts them one each."""
    token_id = FIRST_WORD_ID + k % (VOCAB_SIZE - FIRST_WORD_ID)
    return f" w{token_id}", token_id


@dataclass
class Plan:
    """What one request generates, decided up front; streaming only replays it on the clock."""

    pieces: list[str]  # text of each generated token; "" for EOS
    ids: list[int]
    text: str  # the final text, stop string trimmed as SGLang does by default
    finish: dict[str, Any]  # SGLang's meta_info.finish_reason
    _ends: list[int] = field(default_factory=list, repr=False)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def text_after(self, n: int) -> str:
        """The cumulative text a stream shows after n tokens (always a prefix of the final text)."""
        if len(self._ends) != len(self.pieces):  # prefix lengths, so a long stream is not quadratic here
            self._ends = list(itertools.accumulate(len(p) for p in self.pieces))
        n = min(n, len(self.pieces))
        return self.text[: min(self._ends[n - 1], len(self.text))] if n > 0 else ""


def plan_generation(natural: str, has_eos: bool, max_tokens: int, stop: Sequence[str], ignore_eos: bool) -> Plan:
    """Generate `natural`, then EOS (if `has_eos`), then filler, stopping at a stop string or `max_tokens`.

    Like SGLang: a stop string is searched in the text after each token and trimmed from the output, the
    token that completed it still counts; EOS counts as a token and has no text; ignore_eos skips EOS only.
    """
    natural_pieces = split_tokens(natural)
    pieces: list[str] = []
    ids: list[int] = []
    text = ""
    filler = 0
    stops = [s for s in stop if s]
    while len(pieces) < max_tokens:
        k = len(pieces)
        if k < len(natural_pieces):
            piece, token_id = natural_pieces[k], 0
        elif has_eos and not ignore_eos:
            pieces.append("")
            ids.append(EOS_TOKEN_ID)
            return Plan(pieces, ids, text, {"type": "stop", "matched": EOS_TOKEN_ID})
        else:
            piece, token_id = filler_token(filler)
            filler += 1
        pieces.append(piece)
        ids.append(token_id)
        text += piece
        window = max(0, len(text) - len(piece) - max((len(s) for s in stops), default=0))
        hits = [(at, s) for s in stops if (at := text.find(s, window)) >= 0]
        if hits:
            at, matched = min(hits)
            return Plan(pieces, ids, text[:at], {"type": "stop", "matched": matched})
    return Plan(pieces, ids, text, {"type": "length", "length": max_tokens})


def ideal_output_throughput(
    output_len: int, concurrency: int, ttft_ms: float, itl_ms: float, max_running: int = 0
) -> float:
    """Output tok/s of a steady closed loop at `concurrency` against the stub (no client or network overhead).

    Each request takes ``ttft + (output_len - 1) * itl``; at most ``max_running`` generate at once.
    """
    busy = min(concurrency, max_running) if max_running > 0 else concurrency
    seconds = (ttft_ms + max(output_len - 1, 0) * itl_ms) / 1000.0
    return math.inf if seconds <= 0 else busy * output_len / seconds


# ------------------------------------------------------------------------------------------------- tokenizer


def _word_vocab() -> dict[str, int]:
    vocab = {UNK_TOKEN: 0, EOS_TOKEN: EOS_TOKEN_ID}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD_ID, VOCAB_SIZE)})
    return vocab


# Enough for bench_serving's check_chat_template and for --apply-chat-template to have something to render.
_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def write_tokenizer(directory: str | os.PathLike[str]) -> str:
    """Write a word-level HF tokenizer into `directory` (kept as is if one is there already); returns the path.

    Uses tokenizers + transformers' save_pretrained when importable, so the files are exactly what the
    installed AutoTokenizer expects; otherwise writes the same tokenizer.json by hand.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists():
        return str(out)
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        _write_tokenizer_json(out)
        return str(out)
    backend = Tokenizer(models.WordLevel(vocab=_word_vocab(), unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=UNK_TOKEN, eos_token=EOS_TOKEN, model_max_length=1 << 20
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return str(out)


def _write_tokenizer_json(out: Path) -> None:
    special = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in ((UNK_TOKEN, 0), (EOS_TOKEN, EOS_TOKEN_ID))
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": _word_vocab(), "unk_token": UNK_TOKEN},
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK_TOKEN,
        "eos_token": EOS_TOKEN,
        "model_max_length": 1 << 20,
        "chat_template": _CHAT_TEMPLATE,
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# ---------------------------------------------------------------------------------------------------- server


@dataclass
class StubConfig:
    host: str = "127.0.0.1"
    port: int = 0
    model_path: str | None = None  # default: the tokenizer directory, as a real server's path is a local dir
    served_model_name: str | None = None  # default: model_path, as in SGLang
    tokenizer_dir: str | None = None  # reuse or fill this directory; default: a temp dir removed on stop
    gsm8k_data: str | None = None  # a test.jsonl; without it no prompt is a GSM8K question
    gsm8k_accuracy: float = 1.0
    seed: int = 0
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    max_running: int = 0  # 0: no limit
    startup_delay: float = 0.0
    never_ready: bool = False
    die_after_requests: int = 0  # 0: never
    fail_rate: float = 0.0
    broken: str | None = None  # one of BROKEN: how every generation request is answered wrongly
    stall_after: int = 0  # 0: never; generation requests after the N-th hang mid-response
    context_length: int = 1 << 20
    version: str = SGLANG_VERSION
    api_key: str | None = None  # as SGLang's --api-key: logged with the server's arguments, in /server_info
    # The CLI exits the process; in process that would kill the caller, so the server only stops answering.
    hard_exit: bool = False


@dataclass
class _Stats:
    requests: int = 0  # generation requests received (completions, chat, generate)
    failed: int = 0  # answered 500 by --fail-rate
    completed: int = 0
    running: int = 0
    max_running_seen: int = 0
    waiting: int = 0
    max_waiting_seen: int = 0
    output_tokens: int = 0
    last_gen_throughput: float = 0.0


class _Dead(Exception):
    pass


@dataclass
class _Request:
    prompt: str | None
    prompt_tokens: int
    max_tokens: int
    stop: list[str]
    ignore_eos: bool
    chat: bool
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(s) for s in value]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _sse(obj: Any) -> bytes:
    return f"data: {obj if isinstance(obj, str) else _dumps(obj)}\n\n".encode()


class StubServer:
    def __init__(self, config: StubConfig) -> None:
        if not 0.0 <= config.fail_rate <= 1.0:
            raise ValueError("fail_rate must be in [0, 1]")
        if config.broken is not None and config.broken not in BROKEN:
            raise ValueError(f"broken must be one of {BROKEN}, got {config.broken!r}")
        self.config = config
        self.stats = _Stats()
        self.started = time.time()
        self._own_tokenizer_dir = config.tokenizer_dir is None
        tok_dir = config.tokenizer_dir or tempfile.mkdtemp(prefix="serve_stub_tok_")
        self.tokenizer_path = write_tokenizer(tok_dir)
        self.model_path = config.model_path or self.tokenizer_path
        self.served_model_name = config.served_model_name or self.model_path
        self.bank = GSM8KBank.load(config.gsm8k_data, config.gsm8k_accuracy, config.seed) if config.gsm8k_data else None
        self.dead = False
        self.port = 0
        self._slots: asyncio.Semaphore | None = None
        self._runner: web.AppRunner | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._unstall = asyncio.Event()  # set on close: stalled requests end

    # ---- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024**2, middlewares=[self._guard])
        r = app.router
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_get("/v1/models", self.models)
        r.add_get("/v1/models/{model:.+}", self.model_card)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.model_info)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.server_info)
        for path in ("/health", "/health_generate", "/ready"):
            r.add_get(path, self.health)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_get("/stub/stats", self.stub_stats)  # not SGLang: lets tests see queueing and counts
        return app

    async def start(self) -> int:
        self._slots = asyncio.Semaphore(self.config.max_running) if self.config.max_running > 0 else None
        # A short shutdown timeout: stop() must not wait a minute for streams in flight.
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.started = time.time()
        return self.port

    async def close(self) -> None:
        self._unstall.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_tokenizer_dir:
            shutil.rmtree(self.tokenizer_path, ignore_errors=True)

    def ready(self) -> bool:
        return not self.config.never_ready and time.time() - self.started >= self.config.startup_delay

    def _die(self) -> None:
        if self.config.hard_exit:
            sys.stdout.flush()
            os._exit(DIE_EXIT_CODE)
        # In process: drop every connection and refuse the rest, which is what a client of a dead server sees.
        self.dead = True
        for transport in list(self._transports):
            transport.abort()
        if self._runner is not None:
            asyncio.get_running_loop().create_task(self._stop_listening())

    async def _stop_listening(self) -> None:
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        transport = request.transport
        try:
            if self.dead:
                raise _Dead()
            if transport is not None:
                self._transports.add(transport)
            try:
                return await handler(request)
            finally:
                if transport is not None:
                    self._transports.discard(transport)
        except _Dead:
            # The connection is cut, so the client sees a dead server rather than this response.
            if transport is not None:
                transport.abort()
            return web.Response(status=500)

    def _admit(self) -> bool:
        """Count a generation request; die or pick it for a 500 as configured. True: answer it with 500."""
        self.stats.requests += 1
        n = self.stats.requests
        if self.config.die_after_requests and n > self.config.die_after_requests:
            self._die()
            raise _Dead()
        # Error diffusion: exactly floor(n * rate) of the first n requests fail, spread evenly.
        rate = self.config.fail_rate
        if math.floor(n * rate + 1e-9) > math.floor((n - 1) * rate + 1e-9):
            self.stats.failed += 1
            return True
        return False

    async def _misbehave(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse | None:
        """The answer of a broken or stalled server to a generation request just admitted, else None.

        Both are the same for every route and client: a 200 whose JSON (or whose stream's first event) is
        cut short. Broken, the body ends there; stalled, nothing more is sent until the stub stops."""
        stall = 0 < self.config.stall_after < self.stats.requests
        if not stall and self.config.broken != "invalid_json":
            return None
        stream = bool(body.get("stream"))
        head = f'{{"id":"{uuid.uuid4().hex}","object":"text_completion","choices":[{{"index":0,"text":"'
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream" if stream else "application/json"}
        )
        try:
            await resp.prepare(request)
            if stall:
                await resp.write((f"data: {head}" if stream else head).encode())
                await self._unstall.wait()  # the stub stops: the connection is cut
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write((f"data: {head}\n\ndata: [DONE]\n\n" if stream else head).encode())
            await resp.write_eof()
        except ConnectionResetError:  # the client gave up on it first
            pass
        return resp

    # ---- the model

    def _natural(self, prompt: str | None, chat: bool) -> tuple[str, bool]:
        """What the model would write with no limits, and whether it then emits EOS."""
        if prompt is None or self.bank is None:
            return "", False
        found = self.bank.find(prompt)
        if found is None:
            return "", False
        row, marker = found
        body = NO_NUMBER_ANSWER if self.config.broken == "no_number" else self.bank.answer(row)
        if chat:
            return body, True
        # A base model after a few-shot completion prompt goes on to the next "Question:"; clients stop there.
        tail = f"\n\n{marker}:" if marker else ""
        return " " + body + tail, True

    def _plan(self, req: _Request) -> Plan:
        natural, has_eos = self._natural(req.prompt, req.chat)
        return plan_generation(natural, has_eos, req.max_tokens, req.stop, req.ignore_eos)

    async def _run(self, req: _Request, plan: Plan, on_token: Callable[[int], Any] | None) -> None:
        """Replay `plan` on the clock: token k at ttft + k * itl after admission, after waiting for a slot."""
        self.stats.waiting += 1
        self.stats.max_waiting_seen = max(self.stats.max_waiting_seen, self.stats.waiting)
        if self._slots is not None:
            await self._slots.acquire()
        self.stats.waiting -= 1
        self.stats.running += 1
        self.stats.max_running_seen = max(self.stats.max_running_seen, self.stats.running)
        loop = asyncio.get_running_loop()
        start = loop.time()
        ttft, itl = self.config.ttft_ms / 1000.0, self.config.itl_ms / 1000.0
        try:
            n = plan.completion_tokens
            for k in range(1, n + 1):
                delay = start + ttft + (k - 1) * itl - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif k % 64 == 0:
                    await asyncio.sleep(0)  # let other streams run when there is no clock
                if on_token is not None:
                    await on_token(k)
            if n == 0 and on_token is not None:
                await on_token(0)
            elapsed = loop.time() - start
            self.stats.completed += 1
            self.stats.output_tokens += n
            if elapsed > 0:
                self.stats.last_gen_throughput = n / elapsed
        finally:
            self.stats.running -= 1
            if self._slots is not None:
                self._slots.release()

    # ---- generation routes

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise web.HTTPBadRequest(text=_dumps({"error": {"message": f"invalid JSON: {e}"}})) from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=_dumps({"error": {"message": "request body must be a JSON object"}}))
        return body

    @staticmethod
    def _openai_error(message: str, status: int, err_type: str) -> web.Response:
        body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
        return web.json_response(body, status=status, dumps=_dumps)

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
            "completion_tokens_details": None,
        }

    @staticmethod
    def _matched(plan: Plan) -> str | int | None:
        return plan.finish.get("matched")

    @staticmethod
    def _prompt_of(item: Any) -> tuple[str | None, int]:
        """(text, token count) of one prompt: a string, or token ids (which the stub cannot read as a question)."""
        if isinstance(item, str):
            return item, count_tokens(item)
        if isinstance(item, list):
            return None, len(item)
        raise web.HTTPBadRequest(text=_dumps({"error": {"message": f"unsupported prompt type {type(item)}"}}))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if self._admit():
            return self._openai_error("Internal server error (stub --fail-rate)", 500, "InternalServerError")
        if (broken := await self._misbehave(request, body)) is not None:
            return broken
        if body.get("echo") or body.get("logprobs"):
            return self._openai_error("the stub does not compute logprobs", 400, "BadRequestError")
        prompt = body.get("prompt", "")
        # A list of strings, or of id lists, is a batch; a flat id list is one prompt.
        batch = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
        prompts = prompt if batch else [prompt]
        max_tokens = body.get("max_tokens")
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS if max_tokens is None else int(max_tokens)
        reqs = []
        for item in prompts:
            text, n_prompt = self._prompt_of(item)
            reqs.append(
                _Request(text, n_prompt, max_tokens, _stop_list(body.get("stop")), bool(body.get("ignore_eos")), False)
            )
        model = body.get("model") or self.served_model_name
        created = int(time.time())
        rid = reqs[0].rid
        if body.get("stream"):
            return await self._stream_completions(request, body, reqs, model, created, rid)
        plans = [self._plan(r) for r in reqs]
        await asyncio.gather(*(self._run(r, p, None) for r, p in zip(reqs, plans)))
        choices = [
            {
                "index": i,
                "text": p.text,
                "logprobs": None,
                "finish_reason": p.finish["type"],
                "matched_stop": self._matched(p),
            }
            for i, p in enumerate(plans)
        ]
        usage = self._usage(sum(r.prompt_tokens for r in reqs), sum(p.completion_tokens for p in plans))
        out = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
            "metadata": None,
        }
        return web.json_response(out, dumps=_dumps)

    async def _stream_completions(
        self, request: web.Request, body: dict[str, Any], reqs: list[_Request], model: str, created: int, rid: str
    ) -> web.StreamResponse:
        resp = await self._start_sse(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        plans = [self._plan(r) for r in reqs]
        # Batched streams run one after another: the stub keeps one clock per response.
        for index, (req, plan) in enumerate(zip(reqs, plans)):
            sent = 0

            async def on_token(k: int, req: _Request = req, plan: Plan = plan, index: int = index) -> None:
                nonlocal sent
                text = plan.text_after(k)
                last = k >= plan.completion_tokens
                choice = {
                    "index": index,
                    "text": text[sent:],
                    "logprobs": None,
                    "finish_reason": plan.finish["type"] if last else None,
                    "matched_stop": self._matched(plan) if last else None,
                }
                sent = len(text)
                chunk: dict[str, Any] = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": self._usage(req.prompt_tokens, k) if continuous else None,
                }
                await resp.write(_sse(chunk))

            await self._run(req, plan, on_token)
        if include_usage:
            usage = self._usage(sum(r.prompt_tokens for r in reqs), sum(p.completion_tokens for p in plans))
            usage = {k: v for k, v in usage.items() if v is not None}  # SGLang dumps this chunk exclude_none
            final = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": []}
            await resp.write(_sse({**final, "usage": usage}))
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
        return resp

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if self._admit():
            return self._openai_error("Internal server error (stub --fail-rate)", 500, "InternalServerError")
        if (broken := await self._misbehave(request, body)) is not None:
            return broken
        messages = body.get("messages") or []
        contents = []
        for m in messages:
            c = m.get("content")
            if isinstance(c, list):  # content parts
                c = "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
            if isinstance(c, str):
                contents.append(c)
        # The question is in the last user turn; earlier turns are few-shot pairs.
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        user_text = last_user.get("content") if last_user else None
        prompt = user_text if isinstance(user_text, str) else "\n".join(contents)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = DEFAULT_CHAT_MAX_TOKENS if max_tokens is None else int(max_tokens)
        prompt_tokens = sum(count_tokens(c) for c in contents)
        req = _Request(
            prompt, prompt_tokens, max_tokens, _stop_list(body.get("stop")), bool(body.get("ignore_eos")), True
        )
        plan = self._plan(req)
        model = body.get("model") or self.served_model_name
        created = int(time.time())
        if not body.get("stream"):
            await self._run(req, plan, None)
            message = {"role": "assistant", "content": plan.text, "reasoning_content": None}
            choice = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": plan.finish["type"],
                "matched_stop": self._matched(plan),
            }
            out = {
                "id": req.rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": self._usage(prompt_tokens, plan.completion_tokens),
                "metadata": None,
            }
            return web.json_response(out, dumps=_dumps)

        resp = await self._start_sse(request)
        options = body.get("stream_options") or {}

        def chunk(delta: dict[str, Any], finish: str | None = None, matched: Any = None, usage: Any = None) -> bytes:
            full_delta = {"role": None, "content": None, "reasoning_content": None, **delta}
            choice = {
                "index": 0,
                "delta": full_delta,
                "logprobs": None,
                "finish_reason": finish,
                "matched_stop": matched,
            }
            return _sse(
                {
                    "id": req.rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )

        sent = 0
        first = True

        async def on_token(k: int) -> None:
            nonlocal sent, first
            if first:  # SGLang opens with an empty assistant delta
                first = False
                await resp.write(chunk({"role": "assistant", "content": ""}))
            text = plan.text_after(k)
            if len(text) > sent:
                usage = self._usage(prompt_tokens, k) if options.get("continuous_usage_stats") else None
                await resp.write(chunk({"content": text[sent:]}, usage=usage))
                sent = len(text)

        await self._run(req, plan, on_token)
        await resp.write(chunk({}, finish=plan.finish["type"], matched=self._matched(plan)))
        if options.get("include_usage"):
            usage = {k: v for k, v in self._usage(prompt_tokens, plan.completion_tokens).items() if v is not None}
            final = {"id": req.rid, "object": "chat.completion.chunk", "created": created, "model": model}
            await resp.write(_sse({**final, "choices": [], "usage": usage}))
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
        return resp

    def _meta_info(self, req: _Request, plan: Plan, k: int, started: float) -> dict[str, Any]:
        done = k >= plan.completion_tokens
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": plan.finish if done else None,
            "prompt_tokens": req.prompt_tokens,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": k,
            "cached_tokens": 0,
        }
        if done:
            meta["e2e_latency"] = time.time() - started
        return meta

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if self._admit():
            return web.json_response({"error": {"message": "Internal server error (stub --fail-rate)"}}, status=500)
        if (broken := await self._misbehave(request, body)) is not None:
            return broken
        if body.get("text") is not None:
            batch = isinstance(body["text"], list)
            items = body["text"] if batch else [body["text"]]
        elif body.get("input_ids") is not None:
            ids = body["input_ids"]
            batch = bool(ids) and isinstance(ids[0], list)
            items = ids if batch else [ids]
        else:
            return web.json_response({"error": {"message": "Either text or input_ids should be provided."}}, status=400)
        params = body.get("sampling_params") or {}
        if isinstance(params, list):
            params = params[0] if params else {}
        max_new = params.get("max_new_tokens")
        max_new = DEFAULT_GENERATE_MAX_NEW_TOKENS if max_new is None else int(max_new)
        reqs = []
        for item in items:
            text, n_prompt = self._prompt_of(item)
            reqs.append(
                _Request(text, n_prompt, max_new, _stop_list(params.get("stop")), bool(params.get("ignore_eos")), False)
            )
        plans = [self._plan(r) for r in reqs]
        started = time.time()

        def result(i: int, k: int) -> dict[str, Any]:
            plan = plans[i]
            out = {
                "text": plan.text_after(k),
                "output_ids": plan.ids[:k],
                "meta_info": self._meta_info(reqs[i], plan, k, started),
            }
            if batch:
                out["index"] = i
            return out

        if not body.get("stream"):
            await asyncio.gather(*(self._run(r, p, None) for r, p in zip(reqs, plans)))
            outs = [result(i, p.completion_tokens) for i, p in enumerate(plans)]
            return web.json_response(outs if batch else outs[0], dumps=_dumps)

        resp = await self._start_sse(request)
        for i, (req, plan) in enumerate(zip(reqs, plans)):

            async def on_token(k: int, i: int = i) -> None:
                # Cumulative text and counts, as SGLang streams them without --incremental-streaming-output.
                await resp.write(_sse(result(i, k)))

            await self._run(req, plan, on_token)
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
        return resp

    async def _start_sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        return resp

    # ---- info routes

    def _model_card(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(self.started),
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.config.context_length,
        }

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card(self.served_model_name)]}, dumps=_dumps)

    async def model_card(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.served_model_name:
            error = {
                "message": f"The model '{name}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=404, dumps=_dumps)
        return web.json_response(self._model_card(name), dumps=_dumps)

    async def model_info(self, request: web.Request) -> web.Response:
        info = {
            "model_path": self.model_path,
            "served_model_name": self.served_model_name,
            "tokenizer_path": self.tokenizer_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "load_format": "auto",
            "reasoning_parser": None,
            "tool_call_parser": None,
            "disaggregation_mode": "null",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": "deepseek_v4",
            "architectures": ["DeepseekV4ForCausalLM"],
        }
        return web.json_response(info, dumps=_dumps)

    def launch_command(self) -> str:
        c = self.config
        cmd = f"python -m sglang.launch_server --model-path {self.model_path} --host {c.host} --port {self.port}"
        if c.served_model_name:
            cmd += f" --served-model-name {c.served_model_name}"
        if c.max_running:
            cmd += f" --max-running-requests {c.max_running}"
        return cmd

    async def server_info(self, request: web.Request) -> web.Response:
        c = self.config
        max_running = c.max_running or 4096
        # A flat subset of ServerArgs.resolved_dict(), then what build_server_info and the route add.
        info: dict[str, Any] = {
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "api_key": c.api_key,
            "tokenizer_mode": "auto",
            "served_model_name": self.served_model_name,
            "host": c.host,
            "port": self.port,
            "dtype": "auto",
            "kv_cache_dtype": "auto",
            "quantization": None,
            "context_length": c.context_length,
            "max_running_requests": c.max_running or None,
            "chunked_prefill_size": 8192,
            "mem_fraction_static": 0.85,
            "tp_size": 1,
            "dp_size": 1,
            "ep_size": 1,
            "pp_size": 1,
            "attention_backend": None,
            "moe_runner_backend": "auto",
            "speculative_algorithm": None,
            "random_seed": c.seed,
            "stream_interval": 1,
            "incremental_streaming_output": False,
            "trust_remote_code": True,
            "enable_metrics": False,
            "launch_command": self.launch_command(),
            "max_req_input_len": c.context_length - 1,
            "max_total_num_tokens": c.context_length * 4,
            "kv_events": None,
            "startup_time": self.started,
            "internal_states": [
                {
                    "world_size": 1,
                    "startup_time": self.started,
                    "effective_max_running_requests_per_dp": max_running,
                    "last_gen_throughput": self.stats.last_gen_throughput,
                    "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": c.context_length, "graph": 0.0},
                    "disaggregation_mode": "null",
                    "decode_cuda_graph_bs": [],
                    "decode_cuda_graph_memory_gb": 0.0,
                }
            ],
            "version": c.version,
            "frontend": "python",
            # Not SGLang's: marks the blob as the stand-in's, with its knobs.
            "stub": {k: v for k, v in asdict(c).items() if k != "hard_exit"},
        }
        return web.json_response(info, dumps=_dumps)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready() else 503)

    async def flush_cache(self, request: web.Request) -> web.Response:
        text = (
            "Cache flushed.\nPlease check backend logs for more details. "
            "(When there are running or waiting requests, the operation will not be performed.)\n"
        )
        return web.Response(text=text)

    async def stub_stats(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.stats), dumps=_dumps)


# ---------------------------------------------------------------------------------------------- entry points


def start_stub(config: StubConfig | None = None, **options: Any) -> tuple[str, Callable[[], None]]:
    """Start a stub on a daemon thread; returns (base URL, stop). `options` are StubConfig fields."""
    config = config or StubConfig(**options)
    server = StubServer(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    stop_event: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop_event
        stop_event = asyncio.Event()
        try:
            await server.start()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            failure.append(e)
            started.set()
            return
        started.set()
        try:
            await stop_event.wait()
        finally:
            await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="serve-stub", daemon=True)
    thread.start()
    started.wait(60)
    if failure:
        raise failure[0]

    def stop() -> None:
        if thread.is_alive() and stop_event is not None:
            loop.call_soon_threadsafe(stop_event.set)
            thread.join(10)
        if not loop.is_closed() and not thread.is_alive():
            loop.close()

    return f"http://{config.host}:{server.port}", stop


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.serve_stub", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'ready <port>')")
    p.add_argument("--model-path", default=None, help="default: the tokenizer directory")
    p.add_argument("--served-model-name", default=None, help="default: the model path, as in SGLang")
    p.add_argument("--tokenizer-dir", default=None, help="reuse or fill this directory (default: a temp dir)")
    p.add_argument("--gsm8k-data", default=None, help="GSM8K test.jsonl whose questions the stub knows")
    p.add_argument("--gsm8k-accuracy", "--accuracy", type=float, default=1.0, help="share answered right")
    p.add_argument("--seed", type=int, default=0, help="picks which questions are answered right")
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--itl-ms", type=float, default=0.0)
    p.add_argument("--max-running", type=int, default=0, help="requests generating at once; more queue (0: no cap)")
    p.add_argument("--startup-delay", type=float, default=0.0, help="seconds of 503 from /health after listening")
    p.add_argument("--never-ready", action="store_true", help="/health stays 503")
    p.add_argument("--die-after-requests", type=int, default=0, help=f"exit {DIE_EXIT_CODE} on request N+1")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of generation requests answered 500")
    p.add_argument("--broken", choices=BROKEN, default=None, help="answer every generation request wrongly")
    p.add_argument("--stall-after", type=int, default=0, help="hang mid-response from generation request N+1")
    p.add_argument("--context-length", type=int, default=1 << 20)
    p.add_argument("--sglang-version", dest="version", default=SGLANG_VERSION, help="/server_info version")
    p.add_argument("--api-key", default=None, help="logged at start with the other arguments, as SGLang logs it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = StubConfig(**vars(args), hard_exit=True)
    print(f"server_args={config!r}", file=sys.stderr, flush=True)  # SGLang logs its ServerArgs, api_key included

    async def serve() -> None:
        server = StubServer(config)
        port = await server.start()
        print(f"ready {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

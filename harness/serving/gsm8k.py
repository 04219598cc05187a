"""GSM8K against a serving SGLang: the data, and the three ways it is scored.

- `lm_eval`: lm-evaluation-harness's own `gsm8k` task (5-shot from train, strict and flexible
  match) through its `local-completions` model, reading a local copy of the data; per-question
  results are kept, so two runs are compared question by question (McNemar). It runs in its own
  process (this module's `__main__`), so that its deadline can end it.
- `cookbook`: the DeepSeek-V4 cookbook's `python -m sglang.test.few_shot_gsm8k` (5-shot, native
  /generate), as its users run it.
- `run_eval`: upstream's CI gate, `python -m sglang.test.run_eval --eval-name gsm8k --api completion`
  (5-shot, /v1/completions; DeepSeek-V4-Flash must score at least 0.93).

Each runs in a process of its own under `AccuracyConfig.timeout_s` (harness/serving/client.py: killed
past it, the unit `timeout`). An evaluation whose requests mostly failed, or whose answers mostly had
no number in them, raises EvalError with the counts (`mostly`: more than half of its questions), so
it is `failed`, never an accuracy of 0.

Data: `--data-dir` (a folder with test.jsonl and train.jsonl, openai/grade-school-math's format),
else a cache filled once from openai/grade-school-math and checked against known sha256 sums.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.serving import client

SOURCE = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{}.jsonl"
SHA256 = {
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
}
TASK = "sm120_gsm8k"
LM_EVAL_TRIES = 3  # lm-eval's max_retries: tries per request before it gives up the evaluation


@dataclass
class AccuracyConfig:
    lm_eval: dict | None = None  # {questions (None: all 1319), concurrency, max_gen_toks}
    cookbook: dict | None = None  # {questions, parallel}
    run_eval: dict | None = None  # {examples, threads, floor}
    timeout_s: float = 7200.0  # per evaluation


class DataError(Exception):
    """The GSM8K files are missing, unreachable or not the known ones."""


class EvalError(Exception):
    """An evaluation that produced no score: its tool failed, or most of its requests failed or most of
    its answers could not be read (`mostly`). The message says why, with what the tool printed last;
    `counts` holds how many questions, failed requests and unreadable answers, where the tool tells."""

    def __init__(self, msg: str, counts: dict | None = None):
        super().__init__(msg)
        self.counts = counts or {}


def mostly(count: int, total: int) -> bool:
    """The rule that fails an evaluation, never scoring it: more than half of its `total` questions
    had a failed request or an answer with no number in it (`count`)."""
    return total > 0 and 2 * count > total


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sm120-harness" / "gsm8k"


def data_dir(given: Path | str | None) -> Path:
    """A folder holding the verified test.jsonl and train.jsonl: `given`, else the cache (downloaded
    into once)."""
    if given is not None:
        d = Path(given).resolve()  # the scripts run in folders of their own
        for split in SHA256:
            f = d / f"{split}.jsonl"
            if not f.is_file():
                raise DataError(f"--data-dir {d}: no {split}.jsonl there (openai/grade-school-math's files)")
        return d
    d = cache_dir()
    for split, digest in SHA256.items():
        f = d / f"{split}.jsonl"
        if f.is_file() and _sha256(f) == digest:
            continue
        d.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".part{os.getpid()}")
        try:
            with urllib.request.urlopen(SOURCE.format(split), timeout=60) as r:
                tmp.write_bytes(r.read())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"GSM8K {split}.jsonl is not in {d} and could not be downloaded ({exc}); "
                "on an offline machine pass --data-dir with test.jsonl and train.jsonl"
            ) from exc
        if _sha256(tmp) != digest:
            tmp.unlink()
            raise DataError(f"{SOURCE.format(split)}: the download does not have the known sha256 {digest}")
        os.replace(tmp, f)
    return d


# ------------------------------------------------------------------------------------------ lm-eval


@dataclass
class Score:
    name: str  # "lm_eval" (strict match), "lm_eval_flexible", "cookbook", "run_eval"
    accuracy: float
    n: int
    samples: list[float] | None  # 1.0/0.0 per question, in question order
    detail: dict


def _task_yaml(tasks: Path, data: Path, folder: Path) -> None:
    """lm-eval's built-in gsm8k task (in its `tasks` folder) with only its data replaced by the local files."""
    builtin = tasks / "gsm8k" / "gsm8k.yaml"
    (folder / f"{TASK}.yaml").write_text(
        f"include: {builtin}\n"
        f"task: {TASK}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {data / 'train.jsonl'}\n"
        f"    test: {data / 'test.jsonl'}\n"
    )


def _lm_eval_tasks() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("lm-eval is not installed (pip install 'sm120-harness[serve]')")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def run_lm_eval(
    url: str,
    model: str,
    data: Path,
    *,
    questions: int | None,
    concurrency: int,
    max_gen_toks: int,
    samples_out: Path,
    log: Path,
    timeout_s: float,
) -> list[Score]:
    """Strict- and flexible-match accuracy with per-question results; lm-eval's own samples (prompt,
    response, extracted answer, per filter) go to `samples_out` as JSONL, to read what was answered.

    lm-eval runs in a process of its own (`python -m harness.serving.gsm8k`, which calls its
    simple_evaluate as this module did in process), so that `timeout_s` bounds the whole evaluation
    (client.ClientTimeout); its output is `log`. It stops at the first request that fails its three
    tries (an error, a body that is not JSON): EvalError, with the failed tries its log holds. Else the
    evaluation fails when more than half of the questions got an answer with no number in it (empty
    answers included: a null or empty completion), as `mostly` says, with the counts."""
    tasks = _lm_eval_tasks()
    root = Path(__file__).resolve().parents[2]  # the child imports this harness, wherever it is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("HF_DATASETS_OFFLINE", "1")  # the data is local: never wait on the hub
    with tempfile.TemporaryDirectory(prefix="sm120-harness-lm-eval-") as tmp:
        folder = Path(tmp)
        _task_yaml(tasks, data, folder)
        spec = {
            "model_args": {
                "model": model,
                "base_url": f"{url}/v1/completions",
                "num_concurrent": concurrency,
                "max_retries": LM_EVAL_TRIES,
                "tokenized_requests": False,
                "tokenizer_backend": None,
                "max_gen_toks": max_gen_toks,
            },
            "include_path": tmp,
            "limit": questions,
            "out": str(folder / "result.json"),
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "harness.serving.gsm8k", "lm-eval", str(folder / "spec.json")]
        code, out = client.run(cmd, name="lm-eval", log=log, timeout_s=timeout_s, cwd=folder, env=env)
        result = json.loads((folder / "result.json").read_text()) if code == 0 else None
    if result is None:
        raise _lm_eval_failure(code, out, log, questions)
    r = result["results"]
    all_samples = result["samples"]
    samples_out.parent.mkdir(parents=True, exist_ok=True)
    with open(samples_out, "w", encoding="utf-8") as f:
        for sample in all_samples:
            f.write(json.dumps(sample, default=str) + "\n")
    flexible = [s for s in all_samples if s["filter"] == "flexible-extract"]
    n = len(flexible)
    empty = sum(not _response(s).strip() for s in flexible)
    unparsable = sum(s["filtered_resps"] in (["[invalid]"], "[invalid]") for s in flexible)
    counts = {"questions": n, "empty": empty, "unparsable": unparsable}
    if mostly(unparsable, n):
        raise EvalError(
            f"lm-eval: {unparsable} of {n} answers had no number in them ({empty} empty): no accuracy", counts
        )
    scores = []
    for filt, name in (("strict-match", "lm_eval"), ("flexible-extract", "lm_eval_flexible")):
        docs = sorted((s for s in all_samples if s["filter"] == filt), key=lambda s: s["doc_id"])
        samples = [float(s["exact_match"]) for s in docs]
        acc = r[f"exact_match,{filt}"]
        if samples and abs(sum(samples) / len(samples) - acc) > 1e-9:
            raise EvalError(f"lm-eval's {filt} accuracy {acc} disagrees with its own samples")
        detail = {
            "tool": "lm-eval",
            "version": result["version"],
            "filter": filt,
            "stderr": r.get(f"exact_match_stderr,{filt}"),
            "num_fewshot": result["n-shot"],
            "concurrency": concurrency,
            "max_gen_toks": max_gen_toks,
            **counts,
        }
        scores.append(Score(name, float(acc), len(samples), samples, detail))
    return scores


def _lm_eval_failure(code: int, out: str, log: Path, questions: int | None) -> EvalError:
    """Why lm-eval ended without a result. It logs `Exception:<error>, ..., retrying.` for every try
    that failed and gives the evaluation up when one request has failed all its tries (the tries of
    the requests it then cancels fail too, differently: only those like the first are counted)."""
    tries = re.findall(r"Exception:(\w+)\((.*?)\), .*retrying\.", out)
    counts = {"questions": questions, "failed_tries": sum(t[0] == tries[0][0] for t in tries) if tries else 0}
    if not tries:
        return EvalError(f"lm-eval exited with {code} (log {log}):\n{client.tail(out)}", counts)
    first = f"{tries[0][0]}({tries[0][1]})"
    return EvalError(
        f"lm-eval gave up after a request failed {LM_EVAL_TRIES} tries ({counts['failed_tries']} tries failed "
        f"with {first}, over {questions or 'all'} questions): no accuracy; log {log}",
        counts,
    )


def _response(sample: dict) -> str:
    """The text the server answered for one lm-eval sample (its `resps`: [[text]])."""
    resps = sample.get("resps")
    while isinstance(resps, list) and resps:
        resps = resps[0]
    return resps if isinstance(resps, str) else ""


def _lm_eval_child(spec_file: str) -> int:
    """In the evaluation's own process: lm-eval's simple_evaluate as the spec says, its results and
    samples written to the spec's `out`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    spec = json.loads(Path(spec_file).read_text())
    res = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=spec["model_args"],
        tasks=[TASK],
        task_manager=TaskManager(include_path=spec["include_path"]),
        limit=spec["limit"],
        log_samples=True,
        random_seed=0,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )
    if not res:
        print("lm-eval returned no result", file=sys.stderr)
        return 1
    result = {
        "results": res["results"][TASK],
        "n-shot": res.get("n-shot", {}).get(TASK),
        "version": getattr(lm_eval, "__version__", None),
        "samples": res["samples"][TASK],
    }
    Path(spec["out"]).write_text(json.dumps(result, default=str))
    return 0


# ------------------------------------------------------------------------------- SGLang's scripts


def _run_script(args: list[str], log: Path, timeout_s: float, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    return client.run([sys.executable, "-m", *args], name=args[0], log=log, timeout_s=timeout_s, cwd=cwd, env=env)


def run_cookbook(url: str, data: Path, *, questions: int, parallel: int, log: Path, timeout_s: float) -> Score:
    """The cookbook's few_shot_gsm8k; it takes a host and port, not a URL.

    A request that fails (an error, a body that is not JSON) makes its program warn "Error in
    stream_executor" (every time: Python's warnings are set to `always` for it) and the script end in a
    KeyError: EvalError, with how many requests failed. Its `Invalid:` line is the share of answers with
    no number in them: more than half (`mostly`) is an EvalError too, with the count."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    args = ["sglang.test.few_shot_gsm8k", "--data-path", str(data / "test.jsonl")]
    args += ["--num-questions", str(questions), "--parallel", str(parallel), "--host", host, "--port", port]
    env = {**os.environ, "PYTHONWARNINGS": "always::UserWarning"}
    code, out = _run_script(args, log, timeout_s, log.parent / "cookbook", env)
    failed = out.count("UserWarning: Error in stream_executor:")
    counts = {"questions": questions, "requests_failed": failed}
    if code != 0:
        if failed:  # one is enough to end it in a KeyError
            msg = f"few_shot_gsm8k: {failed} of {questions} requests failed and it exited with {code}: no accuracy"
        else:
            msg = f"few_shot_gsm8k exited with {code}"
        raise EvalError(f"{msg}; log {log}:\n{client.tail(out)}", counts)
    acc = re.findall(r"^Accuracy:\s*([0-9.]+)", out, re.M)
    if not acc:
        raise EvalError(f"few_shot_gsm8k printed no 'Accuracy:' line: {client.tail(out)}", counts)
    inv = re.findall(r"^Invalid:\s*([0-9.]+)", out, re.M)
    invalid = float(inv[-1]) if inv else None
    counts["unparsable"] = round(invalid * questions) if invalid is not None else None
    if mostly(failed, questions) or mostly(counts["unparsable"] or 0, questions):
        what = f"{failed} of {questions} requests failed, " if failed else ""
        raise EvalError(
            f"few_shot_gsm8k: {what}{counts['unparsable']} of {questions} answers had no number in them "
            f"(Invalid: {invalid}): no accuracy",
            counts,
        )
    detail = {"tool": "sglang.test.few_shot_gsm8k", "num_shots": 5, "invalid": invalid, **counts}
    return Score("cookbook", float(acc[-1]), questions, None, detail)


def run_upstream_gate(
    url: str, model: str, data: Path, *, examples: int, threads: int, log: Path, timeout_s: float
) -> Score:
    """SGLang CI's GSM8K gate for DeepSeek-V4-Flash: run_eval, completion API, 5-shot.

    run_eval scores a request that failed as an empty answer, after printing "All retry attempts
    exhausted" (an error or a body that is not JSON, six tries) or "Bad Request Error" (a 400, no
    retry); more than half of the examples failed so (`mostly`) is an EvalError with the count, never
    an accuracy. It prints nothing about answers it could not read, so those are not counted."""
    args = ["sglang.test.run_eval", "--base-url", url, "--model", model, "--eval-name", "gsm8k"]
    args += ["--api", "completion", "--num-shots", "5", "--max-tokens", "512", "--num-examples", str(examples)]
    args += ["--num-threads", str(threads), "--gsm8k-data-path", str(data / "test.jsonl")]
    code, out = _run_script(args, log, timeout_s, log.parent / "run_eval")
    # its threads print unlocked, so a message may start mid-line: counted anywhere
    failed = out.count("All retry attempts exhausted") + out.count("Bad Request Error")
    counts = {"questions": examples, "requests_failed": failed}
    if code != 0:
        raise EvalError(f"run_eval exited with {code} (log {log}):\n{client.tail(out)}", counts)
    if mostly(failed, examples):
        raise EvalError(f"run_eval: {failed} of {examples} requests failed (log {log}): no accuracy", counts)
    score = re.findall(r"^Score:\s*([0-9.]+)", out, re.M)
    if not score:
        raise EvalError(f"run_eval printed no 'Score:' line: {client.tail(out)}", counts)
    detail = {"tool": "sglang.test.run_eval", "num_shots": 5, **counts}
    return Score("run_eval", float(score[-1]), examples, None, detail)


if __name__ == "__main__":
    if sys.argv[1:2] != ["lm-eval"] or len(sys.argv) != 3:
        sys.exit("usage: python -m harness.serving.gsm8k lm-eval SPEC.json (run_lm_eval's own process)")
    sys.exit(_lm_eval_child(sys.argv[2]))

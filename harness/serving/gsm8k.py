"""GSM8K against a serving SGLang: the data, and the three ways it is scored.

- `lm_eval`: lm-evaluation-harness's own `gsm8k` task (5-shot from train, strict and flexible
  match) through its `local-completions` model, reading a local copy of the data; per-question
  results are kept, so two runs are compared question by question (McNemar).
- `cookbook`: the DeepSeek-V4 cookbook's `python -m sglang.test.few_shot_gsm8k` (5-shot, native
  /generate), as its users run it.
- `run_eval`: upstream's CI gate, `python -m sglang.test.run_eval --eval-name gsm8k --api completion`
  (5-shot, /v1/completions; DeepSeek-V4-Flash must score at least 0.93).

Data: `--data-dir` (a folder with test.jsonl and train.jsonl, openai/grade-school-math's format),
else a cache filled once from openai/grade-school-math and checked against known sha256 sums.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.workers.environment import scoped_environ

SOURCE = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{}.jsonl"
SHA256 = {
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
}
TASK = "sm120_gsm8k"


@dataclass
class AccuracyConfig:
    lm_eval: dict | None = None  # {questions (None: all 1319), concurrency, max_gen_toks}
    cookbook: dict | None = None  # {questions, parallel}
    run_eval: dict | None = None  # {examples, threads, floor}
    timeout_s: float = 7200.0  # per evaluation


class DataError(Exception):
    """The GSM8K files are missing, unreachable or not the known ones."""


class EvalError(Exception):
    """An evaluation could not produce a score; the message holds what its tool printed last."""


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


def _task_yaml(data: Path, folder: Path) -> None:
    """lm-eval's built-in gsm8k task with only its data replaced by the local files."""
    import lm_eval

    builtin = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
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


def run_lm_eval(
    url: str, model: str, data: Path, *, questions: int | None, concurrency: int, max_gen_toks: int, samples_out: Path
) -> list[Score]:
    """Strict- and flexible-match accuracy with per-question results; lm-eval's own samples (prompt,
    response, extracted answer, per filter) go to `samples_out` as JSONL, to read what was answered."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvalError(f"lm-eval is not installed (pip install 'sm120-harness[serve]'): {exc}") from exc
    offline = {} if "HF_DATASETS_OFFLINE" in os.environ else {"HF_DATASETS_OFFLINE": "1"}
    # the data is local: never wait on the hub (for this evaluation only; the caller's environment stays)
    with scoped_environ(offline), tempfile.TemporaryDirectory(prefix="sm120-harness-lm-eval-") as tmp:
        _task_yaml(data, Path(tmp))
        res = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "model": model,
                "base_url": f"{url}/v1/completions",
                "num_concurrent": concurrency,
                "max_retries": 3,
                "tokenized_requests": False,
                "tokenizer_backend": None,
                "max_gen_toks": max_gen_toks,
            },
            tasks=[TASK],
            task_manager=TaskManager(include_path=tmp),
            limit=questions,
            log_samples=True,
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
    if not res:
        raise EvalError("lm-eval returned no result")
    r = res["results"][TASK]
    samples_out.parent.mkdir(parents=True, exist_ok=True)
    with open(samples_out, "w", encoding="utf-8") as f:
        for sample in res["samples"][TASK]:
            f.write(json.dumps(sample, default=str) + "\n")
    scores = []
    for filt, name in (("strict-match", "lm_eval"), ("flexible-extract", "lm_eval_flexible")):
        docs = sorted((s for s in res["samples"][TASK] if s["filter"] == filt), key=lambda s: s["doc_id"])
        samples = [float(s["exact_match"]) for s in docs]
        acc = r[f"exact_match,{filt}"]
        if samples and abs(sum(samples) / len(samples) - acc) > 1e-9:
            raise EvalError(f"lm-eval's {filt} accuracy {acc} disagrees with its own samples")
        detail = {
            "tool": "lm-eval",
            "version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
            "filter": filt,
            "stderr": r.get(f"exact_match_stderr,{filt}"),
            "num_fewshot": res.get("n-shot", {}).get(TASK),
            "concurrency": concurrency,
            "max_gen_toks": max_gen_toks,
        }
        scores.append(Score(name, float(acc), len(samples), samples, detail))
    return scores


# ------------------------------------------------------------------------------- SGLang's scripts


def _run_script(args: list[str], log: Path, timeout_s: float, cwd: Path) -> str:
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run(
            [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        out = f"{exc.stdout or ''}{exc.stderr or ''}\n(timed out after {timeout_s:.0f} s)"
        log.write_text(f"$ {' '.join(args)}\n{out}")
        raise EvalError(f"{args[0]} timed out after {timeout_s:.0f} s") from exc
    log.write_text(f"$ {' '.join(args)}\n{out}")
    if p.returncode != 0:
        raise EvalError(f"{args[0]} exited with {p.returncode}: {_tail(out)}")
    return out


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_cookbook(url: str, data: Path, *, questions: int, parallel: int, log: Path, timeout_s: float) -> Score:
    """The cookbook's few_shot_gsm8k; it takes a host and port, not a URL."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    args = ["sglang.test.few_shot_gsm8k", "--data-path", str(data / "test.jsonl")]
    args += ["--num-questions", str(questions), "--parallel", str(parallel), "--host", host, "--port", port]
    out = _run_script(args, log, timeout_s, log.parent / "cookbook")
    acc = re.findall(r"^Accuracy:\s*([0-9.]+)", out, re.M)
    if not acc:
        raise EvalError(f"few_shot_gsm8k printed no 'Accuracy:' line: {_tail(out)}")
    inv = re.findall(r"^Invalid:\s*([0-9.]+)", out, re.M)
    detail = {"tool": "sglang.test.few_shot_gsm8k", "num_shots": 5, "invalid": float(inv[-1]) if inv else None}
    return Score("cookbook", float(acc[-1]), questions, None, detail)


def run_upstream_gate(
    url: str, model: str, data: Path, *, examples: int, threads: int, log: Path, timeout_s: float
) -> Score:
    """SGLang CI's GSM8K gate for DeepSeek-V4-Flash: run_eval, completion API, 5-shot."""
    args = ["sglang.test.run_eval", "--base-url", url, "--model", model, "--eval-name", "gsm8k"]
    args += ["--api", "completion", "--num-shots", "5", "--max-tokens", "512", "--num-examples", str(examples)]
    args += ["--num-threads", str(threads), "--gsm8k-data-path", str(data / "test.jsonl")]
    out = _run_script(args, log, timeout_s, log.parent / "run_eval")
    score = re.findall(r"^Score:\s*([0-9.]+)", out, re.M)
    if not score:
        raise EvalError(f"run_eval printed no 'Score:' line: {_tail(out)}")
    return Score("run_eval", float(score[-1]), examples, None, {"tool": "sglang.test.run_eval", "num_shots": 5})

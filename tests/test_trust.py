"""A gate that cannot pass what it did not compare, and a store one bad run cannot break: each case a
reviewer or an attacker tried, on real runs of the CPU smoke profile (two ops, so that a partial run is
one of them)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results.store import load_run
from tests.conftest import ROOT, cli

TWO = "hash_topk,kv_dequant"


def _id(out: str) -> str:
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A store with a baseline (two ops), a candidate like it, a partial run (one op), an audit run, and
    copies of the candidate damaged or left unfinished in each way a run can be."""
    s = tmp_path_factory.mktemp("store")
    runs = {}
    for name, args in (
        ("base", ["run", "--only", TWO]),
        ("cand", ["run", "--only", TWO]),
        ("partial", ["run", "--only", "hash_topk"]),
        ("audit", ["audit", "--only", "hash_topk"]),
    ):
        r = cli([*args, "--store", str(s)])
        assert r.returncode in (0, 1), r.stderr
        runs[name] = _id(r.stdout)

    def copy(name: str, edit) -> None:
        run_id = f"{runs['cand'][:-6]}{name[:6]:0<6}"
        shutil.copytree(s / runs["cand"], s / run_id)
        manifest = json.loads((s / run_id / "run.json").read_text())
        manifest["run_id"] = run_id
        (s / run_id / "run.json").write_text(json.dumps(manifest))
        edit(s / run_id, manifest)
        runs[name] = run_id

    def status(value: str, **more):
        def edit(d: Path, m: dict) -> None:
            (d / "run.json").write_text(json.dumps({**m, "status": value, **more}))

        return edit

    copy("intrpt", status("interrupted"))
    # a run in progress: this process on this host, alive (as load_run tells a running run from a killed one)
    # the newest run of the store, so that `latest` would name it were it not in progress
    copy(
        "runnin", status("running", pid=os.getpid(), host=socket.gethostname(), started_at="2099-01-01T00:00:00+00:00")
    )
    return {"dir": s, **runs}


@pytest.fixture(scope="module")
def damaged(store, tmp_path_factory) -> dict:
    """The same store with a copy of the candidate damaged in each way a run can be."""
    s = tmp_path_factory.mktemp("damaged") / "runs"
    shutil.copytree(store["dir"], s)
    runs = {**store, "dir": s}
    for name, damage in (
        ("noparq", lambda d: (d / "measurements.parquet").unlink()),
        ("trunc0", lambda d: _truncate(d / "measurements.parquet")),
        ("binary", lambda d: (d / "run.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")),
        ("nulljs", lambda d: (d / "run.json").write_text("null")),
    ):
        runs[name] = f"{store['cand'][:-6]}{name}"
        shutil.copytree(s / store["cand"], s / runs[name])
        manifest = json.loads((s / runs[name] / "run.json").read_text())
        (s / runs[name] / "run.json").write_text(json.dumps({**manifest, "run_id": runs[name]}))
        damage(s / runs[name])
    return runs


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:3000])


def _gate(store: dict, base: str, cand: str, *more: str):
    return cli(["gate", "--baseline", store[base], "--candidate", store[cand], "--store", str(store["dir"]), *more])


def test_a_like_candidate_passes_and_says_what_it_compared(store):
    r = _gate(store, "base", "cand")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("compared "))
    compared, total = (int(w) for w in line.split()[1:6:4])
    assert compared == total > 0 and "(100.0%)" in line and "the candidate is complete" in line


def test_a_partial_candidate_fails_naming_the_missing_op(store):
    r = _gate(store, "base", "partial")
    assert r.returncode == 1, r.stdout
    assert "FAIL" in r.stdout and "kv_dequant/*" in r.stdout and "missing from the candidate" in r.stdout
    assert "hash_topk/*" not in r.stdout


def test_missing_rows_the_profile_allows_by_name_pass(store, tmp_path):
    smoke = (ROOT / "suites" / "smoke.toml").read_text()
    assert "[gate]" not in smoke
    allowed = tmp_path / "smoke.toml"
    allowed.write_text(smoke + '\n[gate]\nallow_missing = ["kv_dequant/*"]\n')
    r = _gate(store, "base", "partial", "--suite", str(allowed))
    assert r.returncode == 0, r.stdout
    assert "allowed by the profile" in r.stdout


def test_an_audit_run_is_refused_against_a_kernel_run(store):
    r = _gate(store, "base", "audit")
    assert r.returncode == 2, r.stdout
    assert "['kernels']" in r.stderr and "['audit']" in r.stderr


def test_the_baseline_against_itself_is_a_usage_error(store):
    r = _gate(store, "base", "base")
    assert r.returncode == 2 and "the same run" in r.stderr


@pytest.mark.parametrize("name", ["intrpt", "runnin"])
def test_an_unfinished_candidate_fails(store, name):
    r = _gate(store, "base", name)
    assert r.returncode == 1, r.stdout
    assert "only a complete run is gated" in r.stdout


def test_latest_never_names_a_run_in_progress(store):
    r = cli(["gate", "--baseline", store["base"], "--store", str(store["dir"])])  # --candidate latest
    assert store["runnin"] not in r.stdout
    runs = cli(["runs", "--store", str(store["dir"])]).stdout
    row = next(x for x in runs.splitlines() if x.startswith(store["runnin"]))
    assert " running " in row


def test_a_failed_path_the_baseline_never_had_fails(store, tmp_path):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    shutil.copy(ROOT / "kernels" / "hash_topk.py", kernels)
    base = _id(cli(["run", "--only", "hash_topk", "--kernels-dir", str(kernels), "--store", str(tmp_path)]).stdout)
    broken = (
        (kernels / "hash_topk.py")
        .read_text()
        .replace("PATHS = [", 'PATHS = [\n    Path("sglang.new_and_broken", lambda t, case: 1 / 0),', 1)
    )
    assert broken != (kernels / "hash_topk.py").read_text()
    (kernels / "hash_topk.py").write_text(broken)
    cand = _id(cli(["run", "--only", "hash_topk", "--kernels-dir", str(kernels), "--store", str(tmp_path)]).stdout)
    r = cli(["gate", "--baseline", base, "--candidate", cand, "--store", str(tmp_path), "--kernels-dir", str(kernels)])
    assert r.returncode == 1, r.stdout
    assert "sglang.new_and_broken" in r.stdout and "new: the baseline has no such row" in r.stdout


@pytest.mark.parametrize("name", ["noparq", "trunc0", "binary", "nulljs"])
def test_a_damaged_run_is_named_and_breaks_nothing_else(damaged, name):
    store = damaged
    damaged = store["dir"] / store[name]
    listed = cli(["runs", "--store", str(store["dir"])])
    assert listed.returncode == 0, listed.stderr
    row = next(x for x in listed.stdout.splitlines() if x.startswith(store[name]))
    assert "damaged" in row and str(damaged) in row
    # the other runs still compare, gate and render
    assert _gate(store, "base", "cand").returncode == 0
    assert cli(["compare", store["base"], store["cand"], "--store", str(store["dir"])]).returncode == 0
    site = cli(["report", "--store", str(store["dir"]), "--out", str(store["dir"] / f"site-{name}")])
    assert site.returncode == 0 and f"leaving out damaged run {store[name]}" in site.stderr
    # asked for by name: an error naming the file, never a traceback
    asked = _gate(store, "base", name)
    assert asked.returncode == 2 and str(damaged) in asked.stderr and "Traceback" not in asked.stderr


def test_a_parquet_file_with_fewer_rows_than_written_is_damaged(store, tmp_path):
    d = tmp_path / store["cand"]
    shutil.copytree(store["dir"] / store["cand"], d)
    manifest = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**manifest, "measurements": manifest["measurements"] + 1}))
    with pytest.raises(Exception, match="rows, its run.json says"):
        load_run(d)


def test_a_gate_that_fails_keeps_exit_1_when_its_reader_goes_away(store):
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "gate", "--baseline", store["base"], "--candidate", store["partial"],
         "--store", str(store["dir"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before anything is printed (`gate ... | head -0`)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_at_start_is_exit_3_with_no_run_folder(tmp_path):
    store = tmp_path / "runs"
    store.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--only", "hash_topk", "--store", str(store)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(64),
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "cannot start the run" in r.stderr and str(store) in r.stderr
    assert list(store.iterdir()) == []


def test_a_full_disk_at_finish_keeps_the_journal_and_names_the_file(tmp_path):
    """RunWriter as the engine drives it: rows journaled, then the disk fills before the parquet file."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from harness.results.store import RunWriter, StoreError, row
w = RunWriter.create({str(tmp_path)!r}, {{"profile": {{"name": "t"}}}})
pad = {{"pad": "x" * 500}}
w.add([row(w.run_id, "kernels", f"op/c{{i}}", "v", "p", "calc_diff", float(i), detail=pad) for i in range(200)])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is full from here on
try:
    w.finish("complete")
except StoreError as exc:
    print(exc)
    sys.exit(3)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    (run_dir,) = list(tmp_path.iterdir())
    assert str(run_dir) in r.stdout and "the rows are kept" in r.stdout
    assert len((run_dir / "measurements.jsonl").read_text().splitlines()) == 200
    run = load_run(run_dir)  # no parquet file: the journal is the record, and the run is not complete
    assert len(run.measurements) == 200 and run.status != "complete"


def test_secret_names_and_values_are_told_apart():
    from harness.results.redaction import redact, secret_name, secret_values

    assert all(secret_name(n) for n in ("--api-key", "HF_TOKEN", "SGLANG_API_KEY", "AWS_SECRET_ACCESS_KEY", "password"))
    assert not any(secret_name(n) for n in ("max_tokens", "total_output_tokens", "--tokenizer-path", "key"))
    values = secret_values(["--api-key", "sk-abcdef", "--db", "postgres://u:hunter22@h/db", "--mine", "s3cr3t!"],
                           {"HF_TOKEN": "hf_123456", "OTHER": "visible"}, marked=["--mine"])  # fmt: skip
    assert values == {"sk-abcdef", "hunter22", "hf_123456", "s3cr3t!"}
    manifest = {
        "argv": ["run", "--api-key", "sk-abcdef"],
        "env": {"HF_TOKEN": "hf_123456", "OTHER": "visible"},
        "log": "ServerArgs(api_key='sk-abcdef') Authorization: Bearer abc.def",
        "max_tokens": 5,
    }
    out = redact(manifest, values)
    text = json.dumps(out)
    assert not any(v in text for v in values) and "abc.def" not in text
    assert "visible" in text and out["max_tokens"] == 5


def test_secrets_never_leave_the_process(tmp_path):
    """A launched server with an API key in its arguments (which it logs, and reports in /server_info, as
    SGLang does), a token in its environment, one flag the profile marks secret, a URL with a password, and
    a token in the harness's own environment: none of them in any file of the run, the site, or the
    Markdown of compare."""
    from tests.conftest import needs_sglang, write_profile

    needs_sglang()
    secrets = {"api": "sk-planted-API-0001", "env": "hf_planted_ENV_0002", "mark": "planted-MARKED-0003",
               "url": "planted-URLPW-0004", "own": "planted-OWN-0005"}  # fmt: skip
    data = ROOT / "tests" / "data" / "gsm8k"
    command = ["{python}", "-m", "tests.serve_stub", "--port", "{port}", "--api-key", secrets["api"],
               "--served-model-name", secrets["mark"], "--gsm8k-data", str(data / "test.jsonl"),
               "--model-path", f"https://user:{secrets['url']}@models.invalid/m"]  # fmt: skip
    profile = write_profile(
        tmp_path / "p.toml",
        f"""name = "secrets"
[server]
command = {json.dumps(command)}
env = {{ SGLANG_HF_TOKEN = "{secrets["env"]}" }}
secret = ["--served-model-name"]
[accuracy]
run_eval = {{ examples = 4, threads = 2, floor = 0.5 }}
""",
    )
    store = tmp_path / "runs"
    r = cli(["run", "--suite", str(profile), "--store", str(store), "--data-dir", str(data)],
            env={"MY_SERVICE_TOKEN": secrets["own"]})  # fmt: skip
    run_id = _id(r.stdout)
    assert (store / run_id / "artifacts" / "server.log").read_text().count("server_args=") == 1, r.stderr
    cli(["report", "--store", str(store), "--out", str(tmp_path / "site")])
    cli(["compare", run_id, run_id, "--store", str(store), "--md", str(tmp_path / "compare.md")])
    leaked = {
        (str(f.relative_to(tmp_path)), name)
        for f in tmp_path.rglob("*")
        if f.is_file() and f.name != "p.toml"
        for name, value in secrets.items()
        if value.encode() in f.read_bytes()
    }
    assert not leaked, leaked
    assert "***" in (store / run_id / "artifacts" / "server.log").read_text()
    assert not list(ROOT.glob("https*")), "the stand-in server wrote into the working tree"

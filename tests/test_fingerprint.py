"""Where the SGLang commit comes from, and secrets kept out of what is written."""

import subprocess

from harness.fingerprint import sglang_commit
from harness.results.redaction import redact_args


def _repo(path):
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(path),
            "-c",
            "user.email=a@b",
            "-c",
            "user.name=a",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
    )
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_commit_of_an_sglang_checkout(tmp_path, monkeypatch):
    head = _repo(tmp_path)
    (tmp_path / "python" / "sglang").mkdir(parents=True)
    (tmp_path / "python" / "sglang" / "__init__.py").write_text("")
    monkeypatch.delenv("SGLANG_GIT_COMMIT", raising=False)
    monkeypatch.setenv("SM120_HARNESS_SGLANG_SRC", str(tmp_path / "python"))
    assert sglang_commit() == (head, f"git checkout at {tmp_path / 'python'}")
    monkeypatch.setenv("SGLANG_GIT_COMMIT", "feedbeef")
    assert sglang_commit() == ("feedbeef", "SGLANG_GIT_COMMIT")


def test_sources_inside_another_repository_are_not_its_commit(tmp_path, monkeypatch):
    _repo(tmp_path)  # e.g. a virtualenv inside the harness's own clone
    site = tmp_path / ".venv" / "lib" / "site-packages"
    (site / "sglang").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text("")
    (site / "sglang" / "_version.py").write_text("__version__ = version = '0.5.23'\n__commit_id__ = commit_id = None\n")
    monkeypatch.delenv("SGLANG_GIT_COMMIT", raising=False)
    monkeypatch.setenv("SM120_HARNESS_SGLANG_SRC", str(site))
    assert sglang_commit() == (None, None)
    (site / "sglang" / "_version.py").write_text(
        "__version__ = version = '0.5.23'\n__commit_id__ = commit_id = 'abc123'\n"
    )
    assert sglang_commit() == ("abc123", "sglang/_version.py")


def test_redact_args():
    args = ["run", "--hf-token", "hf_secret", "--api-key=sk-1", "OPENAI_API_KEY=sk-2", "--tp", "2"]
    assert redact_args(args) == ["run", "--hf-token", "***", "--api-key=***", "OPENAI_API_KEY=***", "--tp", "2"]


def test_deep_gemm_version_is_that_of_the_module_an_import_finds(tmp_path, monkeypatch):
    from harness.fingerprint import imported_version

    pkg = tmp_path / "built" / "deep_gemm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n__version__ = '2.8.2.post20261020'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "built"))
    assert imported_version("deep_gemm") == "2.8.2.post20261020"  # read, not imported
    assert imported_version("no_such_module_here") is None

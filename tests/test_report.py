"""The static site: an index, a page per run, history images; untrusted text shows as text."""

import json
import shutil
import subprocess

import pytest

from harness.pages.site import build
from tests.conftest import OPS, cli, write_profile

EVIL = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    prof = write_profile(
        tmp / "p.toml",
        'name = "p"\n[kernels]\ncases = ["tiny"]\n'
        '[kernels.ops.toy_scale]\nimpls = ["good", "off_by_one_row"]\ngoldens = ["fp64"]\n',
    )
    for i in range(2):
        r = cli(
            ["run", "--suite", str(prof), "--kernels-dir", str(OPS), "--store", str(tmp / "runs")],
            env={"SGLANG_GIT_MESSAGE": EVIL if i else "fix: first", "SGLANG_GIT_BRANCH": "pr/<i>x</i>"},
        )
        assert r.returncode in (0, 1), r.stderr[-2000:]
    index = build(tmp / "runs", tmp / "site", OPS)
    return tmp, index


def test_index_lists_every_run_with_links_and_images(site):
    tmp, index = site
    html = index.read_text()
    runs = sorted(p.name for p in (tmp / "runs").iterdir() if (p / "run.json").exists())
    assert len(runs) == 2
    for run_id in runs:
        assert f'href="runs/{run_id}.html"' in html and (tmp / "site" / "runs" / f"{run_id}.html").exists()
    assert 'src="img/drift.png"' in html
    assert (tmp / "site" / "img" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Latest run against the previous one" in html


def test_untrusted_text_is_escaped(site):
    _, index = site
    html = index.read_text()
    assert "<script>alert" not in html and "<b>bold</b>" not in html and "<i>x</i>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html


def test_manifest_records_branch_and_message(site):
    tmp, _ = site
    messages = {
        json.loads((p / "run.json").read_text())["git"]["message"]
        for p in (tmp / "runs").iterdir()
        if (p / "run.json").exists()
    }
    assert messages == {"fix: first", EVIL}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_opens_in_headless_chromium_without_console_errors(site, tmp_path):
    _, index = site
    r = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            index.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "<h1>sm120-harness</h1>" in r.stdout
    assert "alert('x')" in r.stdout and "<script>alert" not in r.stdout  # shown as text, never run
    assert "Uncaught" not in r.stderr and ":ERROR:CONSOLE" not in r.stderr


def test_serving_history_plots_from_measurement_rows(tmp_path):
    """tok/s against concurrency and over runs, and GSM8K with its Wilson interval, drawn from the
    rows the serving suites store (synthetic here: the serving suites come later)."""
    import random

    from harness.results.store import RunWriter, row

    rng = random.Random(0)
    for day in range(3):
        w = RunWriter.create(tmp_path / "runs", {"profile": {"name": "nightly"}, "fingerprint": {}})
        w.manifest["started_at"] = f"2026-11-0{day + 1}T00:00:00+00:00"
        rows = []
        for c in (1, 2, 4, 8):
            s = [100.0 * c * (1 + 0.01 * rng.gauss(0, 1)) for _ in range(3)]
            rows.append(
                row(
                    w.run_id,
                    "perf",
                    f"perf/in128_out256/c{c}",
                    "v1",
                    "server",
                    "output_tok_s",
                    sum(s) / 3,
                    better="higher",
                    samples=s,
                )
            )
        answers = [1.0 if rng.random() < 0.95 else 0.0 for _ in range(1319)]
        rows.append(
            row(
                w.run_id,
                "accuracy",
                "gsm8k/lm_eval",
                "v1",
                "server",
                "gsm8k_acc",
                sum(answers) / 1319,
                better="higher",
                samples=answers,
            )
        )
        w.add(rows)
        w.finish("complete")
    html = build(tmp_path / "runs", tmp_path / "site", OPS).read_text()
    for img in ("throughput.png", "gsm8k.png"):
        assert f'src="img/{img}"' in html
        assert (tmp_path / "site" / "img" / img).read_bytes()[:4] == b"\x89PNG"
    assert 'src="img/drift.png"' not in html  # no kernel rows: no drift history drawn

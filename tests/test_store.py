"""The run store: journal first, parquet at the end, readable after a kill, runs named many ways."""

import json
import math
import os

import pytest

from harness.results.store import RunWriter, StoreError, list_runs, load_run, read_journal, resolve_run, row


def _rows(run_id, n):
    return [
        row(
            run_id,
            "kernels",
            f"op/c{i}",
            "v1",
            "impl",
            "calc_diff",
            1e-6 * i,
            reference="fp64",
            samples=[1.0, 2.0] if i else None,
            detail={"index": [0, i]},
        )
        for i in range(n)
    ]


def test_finished_run_round_trips(tmp_path):
    w = RunWriter.create(tmp_path, {"profile": {"name": "smoke"}, "fingerprint": {"sglang_commit": "abcdef0123"}})
    w.add(_rows(w.run_id, 3))
    w.add([row(w.run_id, "kernels", "op/c9", "v1", "impl", "outcome", math.nan, status="crashed")])
    w.finish("complete")
    run = load_run(w.dir)
    assert run.status == "complete" and run.manifest["measurements"] == 4
    assert not (w.dir / "measurements.jsonl").exists()
    df = run.measurements
    assert list(df["case"]) == ["op/c0", "op/c1", "op/c2", "op/c9"]
    assert df["value"].iloc[2] == pytest.approx(2e-6) and math.isnan(df["value"].iloc[3])
    assert list(df["samples"].iloc[1]) == [1.0, 2.0] and df["samples"].iloc[0] is None
    assert json.loads(df["detail"].iloc[1]) == {"index": [0, 1]}
    assert df["status"].iloc[3] == "crashed"


def test_rows_are_on_disk_before_the_run_ends_and_a_torn_line_is_dropped(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.add(_rows(w.run_id, 2))
    with open(w.dir / "measurements.jsonl", "a") as f:
        f.write('{"run_id": "torn')  # the process died mid-write
    assert len(read_journal(w.dir / "measurements.jsonl")) == 2
    run = load_run(w.dir)
    assert len(run.measurements) == 2
    assert run.status == "running"  # this very process is alive


def test_a_killed_run_reads_as_interrupted(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.add(_rows(w.run_id, 2))
    manifest = json.loads((w.dir / "run.json").read_text())
    manifest["pid"] = 2**22 + 12345  # no such process
    (w.dir / "run.json").write_text(json.dumps(manifest))
    run = load_run(w.dir)
    assert run.status == "interrupted" and len(run.measurements) == 2


def test_bad_run_json_names_the_file(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{")
    with pytest.raises(StoreError, match=r"r/run.json: not valid JSON"):
        load_run(tmp_path / "r")


def test_resolve_by_id_dir_latest_profile_and_commit(tmp_path):
    ids = []
    for name, commit in (("smoke", "aaaaaaa111"), ("nightly", "bbbbbbb222"), ("smoke", "ccccccc333")):
        w = RunWriter.create(tmp_path, {"profile": {"name": name}, "fingerprint": {"sglang_commit": commit}})
        w.manifest["started_at"] = f"2026-01-0{len(ids) + 1}T00:00:00+00:00"
        w.finish("complete")
        ids.append(w.run_id)
    assert resolve_run(tmp_path, "latest").run_id == ids[2]
    assert resolve_run(tmp_path, "latest:nightly").run_id == ids[1]
    assert resolve_run(tmp_path, ids[0]).run_id == ids[0]
    assert resolve_run(tmp_path, str(tmp_path / ids[1])).run_id == ids[1]
    assert resolve_run(tmp_path, "bbbbbbb").run_id == ids[1]
    with pytest.raises(StoreError, match="no run"):
        resolve_run(tmp_path, "latest:pr")
    assert len(list_runs(tmp_path)) == 3


def test_finished_files_are_replaced_atomically(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.finish("complete")
    leftovers = [p for p in os.listdir(w.dir) if p.startswith(".")]
    assert leftovers == []


def test_a_remote_store_is_published_whole_and_read_back():
    """fsspec's in-memory filesystem stands in for object storage."""
    store = "memory://sm120-test-store"
    w = RunWriter.create(store, {"profile": {"name": "smoke"}, "fingerprint": {"sglang_commit": "abcdef0123"}})
    w.add(_rows(w.run_id, 3))
    w.finish("complete")
    (w.dir / "artifacts" / "report.html").write_text("<html></html>")
    url = w.publish()
    assert url == f"{store}/{w.run_id}" and not w.dir.exists()  # the staging copy is gone
    (run,) = list_runs(store)
    assert run.run_id == w.run_id and run.status == "complete" and len(run.measurements) == 3
    assert resolve_run(store, "abcdef0").run_id == w.run_id
    import fsspec

    assert fsspec.filesystem("memory").exists(f"/sm120-test-store/{w.run_id}/artifacts/report.html")


def test_cli_with_a_store_url(tmp_path):
    from tests.conftest import OPS, cli, write_profile

    prof = write_profile(
        tmp_path / "p.toml",
        'name = "p"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.toy_scale]\nimpls = ["good"]\ngoldens = ["fp64"]\n',
    )
    url = (tmp_path / "shared").as_uri()  # file:// : the URL code path on a real filesystem
    for _ in range(2):
        r = cli(["run", "--suite", str(prof), "--kernels-dir", str(OPS), "--store", url])
        assert r.returncode == 0, r.stderr[-2000:]
    assert len(list_runs(url)) == 2
    r = cli(
        [
            "gate",
            "--baseline",
            list_runs(url)[0].run_id,
            "--suite",
            str(prof),
            "--kernels-dir",
            str(OPS),
            "--store",
            url,
        ]
    )
    assert r.returncode == 0 and r.stdout.startswith("### PASS")
    r = cli(["report", "--store", url, "--out", str(tmp_path / "site"), "--kernels-dir", str(OPS)])
    assert r.returncode == 0 and (tmp_path / "site" / "index.html").exists()

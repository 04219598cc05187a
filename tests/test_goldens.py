"""Stored goldens: capture then replay gives the same drift figures; a digest mismatch is not
comparable; a corrupted file or a tampered manifest is an error for that case alone."""

import json

import pytest

from harness.results.store import load_run
from tests.conftest import OPS, cli, needs_sglang, write_profile

TOY = """name = "toy"
[kernels]
cases = ["tiny"]
[kernels.ops.toy_scale]
impls = ["good", "off_by_one_row"]
goldens = ["fp64"]
"""


def _run(tmp, name, args, env=None):
    store = tmp / name
    r = cli(["run", "--store", str(store), *args], env=env)
    return r, load_run(next(store.iterdir())).measurements


def _replay(tmp, prof, name, env=None, source="stored"):
    args = ["--suite", str(prof), "--kernels-dir", str(OPS), "--only", "toy_scale"]
    return _run(tmp, name, [*args, "--golden-dir", str(tmp / "golden"), "--golden-source", source], env=env)


def _drift(m):
    d = m[
        (m["metric"] != "outcome")
        & ~m["metric"].str.startswith("wall_")
        & m["impl"].isin(["good", "off_by_one_row", "sglang.triton"])
    ]
    return {(c, i, ref, k): v for c, i, ref, k, v in zip(d["case"], d["impl"], d["reference"], d["metric"], d["value"])}


def _outcome(m, impl):
    o = m[(m["metric"] == "outcome") & (m["impl"] == impl)]
    return dict(zip(o["case"].str.split("/").str[1], o["status"]))


@pytest.fixture()
def captured(tmp_path):
    prof = write_profile(tmp_path / "toy.toml", TOY)
    r = cli(
        [
            "golden",
            "capture",
            "--suite",
            str(prof),
            "--kernels-dir",
            str(OPS),
            "--only",
            "toy_scale",
            "--out",
            str(tmp_path / "golden"),
            "--store",
            str(tmp_path / "cap"),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stored 3 golden output(s)" in r.stderr
    return tmp_path, prof


def test_capture_writes_manifests_and_an_index(captured):
    tmp, _ = captured
    index = json.loads((tmp / "golden" / "index.json").read_text())
    assert set(index["entries"]) == {f"toy_scale/n{n}/fp64" for n in (4, 8, 16)}
    manifest = json.loads((tmp / "golden" / "toy_scale" / "n8" / "fp64.json").read_text())
    assert manifest["op"] == "toy_scale" and manifest["golden"] == "fp64" and manifest["seed"] == 0
    assert len(manifest["sha256"]) == 64 and len(manifest["input_digest"]) == 64
    assert {"packages", "path"} <= set(manifest["producer"]) and manifest["date"]


def test_replay_gives_the_same_drift_figures(captured):
    tmp, prof = captured
    _, live = _replay(tmp, prof, "live", source="live")
    _, stored = _replay(tmp, prof, "stored")
    assert _drift(live) and _drift(live) == _drift(stored)
    sources = {json.loads(d).get("reference_source") for d in stored[stored["metric"] == "calc_diff"]["detail"]}
    # every reference came from the store (one date per stored file: a capture may cross a second)
    assert sources and all(s.startswith("stored:") for s in sources), sources
    assert {json.loads(d).get("reference_source") for d in live[live["metric"] == "calc_diff"]["detail"]} == {"live"}


def test_changed_inputs_are_not_comparable(captured):
    tmp, prof = captured
    r, m = _replay(tmp, prof, "changed", env={"TOY_INPUT_SCALE": "2"})
    assert set(_outcome(m, "good").values()) == {"skipped(not comparable: its inputs differ from the oracle's)"}
    assert m[m["metric"] == "calc_diff"].empty


def test_corrupted_file_fails_that_case_alone(captured):
    tmp, prof = captured
    f = tmp / "golden" / "toy_scale" / "n8" / "fp64.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    r, m = _replay(tmp, prof, "corrupt")
    status = _outcome(m, "fp64")
    assert status["n4"] == "ok" and status["n16"] == "ok" and status["n8"] == "failed"
    detail = json.loads(m[(m["impl"] == "fp64") & (m["case"] == "toy_scale/n8")].iloc[0]["detail"])
    assert "corrupted or truncated" in detail["error"] and str(f) in detail["error"]
    assert _outcome(m, "good")["n4"] == "ok" and r.returncode == 1


def test_tampered_manifest_fails_that_case_alone(captured):
    tmp, prof = captured
    mf = tmp / "golden" / "toy_scale" / "n16" / "fp64.json"
    manifest = json.loads(mf.read_text())
    manifest["input_digest"] = "0" * 64
    mf.write_text(json.dumps(manifest))
    _, m = _replay(tmp, prof, "tampered")
    status = _outcome(m, "fp64")
    assert status["n16"] == "failed" and status["n4"] == "ok"
    detail = json.loads(m[(m["impl"] == "fp64") & (m["case"] == "toy_scale/n16")].iloc[0]["detail"])
    assert "tampered" in detail["error"]


def test_missing_golden_kernel_is_skipped_with_the_reason_and_the_oracle_runs_live(tmp_path):
    prof = write_profile(tmp_path / "toy.toml", TOY.replace('goldens = ["fp64"]', 'goldens = ["toy.golden"]'))
    (tmp_path / "empty").mkdir()
    args = ["--suite", str(prof), "--kernels-dir", str(OPS), "--only", "toy_scale"]
    _, m = _run(tmp_path, "none", [*args, "--golden-dir", str(tmp_path / "empty"), "--golden-source", "auto"])
    for status in _outcome(m, "toy.golden").values():
        assert status.startswith("skipped(") and "sm_87; stored: no stored golden for toy_scale/" in status
    assert set(_outcome(m, "fp64").values()) == {"ok"}  # nothing of the oracle stored: computed here
    assert set(_outcome(m, "good").values()) == {"ok"}


def test_mla_round_trip_with_the_real_triton_kernel(tmp_path):
    """The acceptance round trip on the CPU: fp64 goldens of the MLA op captured, then replayed with
    the live goldens switched off, give SGLang's Triton kernel the same drift figures."""
    needs_sglang()
    prof = write_profile(
        tmp_path / "mla.toml",
        'name = "mla"\n[kernels]\ncases = ["tiny"]\n'
        '[kernels.ops.mla_sparse_decode]\nimpls = ["sglang.triton"]\ngoldens = ["fp64"]\n',
    )
    r = cli(
        ["golden", "capture", "--suite", str(prof), "--out", str(tmp_path / "golden"), "--store", str(tmp_path / "cap")]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    common = ["--suite", str(prof), "--golden-dir", str(tmp_path / "golden")]
    _, live = _run(tmp_path, "live", [*common, "--golden-source", "live"])
    _, stored = _run(tmp_path, "stored", [*common, "--golden-source", "stored"])
    assert len(_drift(live)) > 20 and _drift(live) == _drift(stored)

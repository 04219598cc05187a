"""The SM120 audit of TileLang kernels lowered for sm_120a without a GPU: a kernel at the block size
that overflowed in the original pull request (mHC split-k, hidden_block=256) is flagged with its
figure, the size the pull request moved SM120 to (128) passes."""

import importlib.util
import json
import os

import pytest

from harness.audit import sm120
from harness.results.store import load_run
from tests.conftest import OPS, cli, write_profile
from tests.test_audit_cuda import needs_nvcc


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    needs_nvcc()
    if importlib.util.find_spec("tilelang") is None:
        if os.environ.get("CI"):
            pytest.fail("tilelang is not installed; CI must install the audit extra (see README)")
        pytest.skip("tilelang is not installed (pip install -e '.[audit]')")
    tmp = tmp_path_factory.mktemp("audit_tilelang")
    text = 'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.planted_tilelang]\n'
    prof = write_profile(tmp / "p.toml", text)
    r = cli(["audit", "--store", str(tmp / "runs"), "--suite", str(prof), "--kernels-dir", str(OPS)])
    run = load_run(next((tmp / "runs").iterdir()))
    return r, run.measurements


def _figures(m, impl):
    rows = m[(m["impl"] == impl) & (m["case"] != "planted_tilelang/capture")]
    assert set(rows["status"]) == {"ok"}, rows[["case", "status", "detail"]].to_string()
    return dict(zip(rows["metric"], rows["value"])), json.loads(rows["detail"].iloc[0])


def test_hidden_block_256_overflows_sm120_and_is_flagged(planted):
    r, m = planted
    assert r.returncode == 1, r.stderr[-3000:]
    fig, detail = _figures(m, "hidden_block_256")
    fits, _ = _figures(m, "hidden_block_128")
    # every staged tile is hidden_block wide: twice the block, twice the shared memory
    assert fig["dynamic_shared_bytes"] == 2 * fits["dynamic_shared_bytes"] > 0
    assert fig["shared_bytes"] == detail["static_shared_bytes"] + fig["dynamic_shared_bytes"] > sm120.SHARED_BYTES
    assert detail["kind"] == "tilelang" and detail["file"].endswith("splitk_sqrsum.py")
    assert detail["target"] == "sm_120a" and detail["kwargs"] == {"hidden_block": 256}
    assert detail["dynamic_shared_from"].startswith("TileLang's lowering")


def test_hidden_block_128_fits(planted):
    _, m = planted
    fig, detail = _figures(m, "hidden_block_128")
    # at least the two stages of the bf16 x tile and the fp32 fn tile, 32 x 128 each
    assert fig["dynamic_shared_bytes"] >= 2 * 32 * 128 * (2 + 4)
    assert detail["kwargs"] == {"hidden_block": 128}
    assert fig["shared_bytes"] <= sm120.SHARED_BYTES and fig["forbidden_instructions"] == 0
    assert 0 < fig["registers"] <= 255 and fig["spill_bytes"] == 0


def test_a_kernel_defined_inside_a_factory_is_lowered_from_the_factorys_arguments(planted):
    """SGLang's split-k mHC kernels are defined inside a cached factory: the capture names the factory
    and the block sizes it was called with, and the audit lowers the same kernel as the module-level
    one, to the same figure."""
    _, m = planted
    fig, detail = _figures(m, "factory_hidden_block_256")
    same, _ = _figures(m, "hidden_block_256")
    assert fig["dynamic_shared_bytes"] == same["dynamic_shared_bytes"]
    assert fig["shared_bytes"] > sm120.SHARED_BYTES
    assert detail["factory"]["qualname"] == "splitk_stage_0_factory"
    called = {"hc_hidden_size": 16384, "split_k": 16, "token_block": 32, "hidden_block": 256}
    assert detail["factory"]["kwargs"] == called

"""The SM120 audit: Triton kernels cross-compiled for sm_120a on a machine without a GPU. Planted
kernels that need more shared memory than SM120 has are flagged, one that fits passes, and SGLang's
real Triton MLA kernel is audited config by config."""

import json
import re

import pytest

from harness.audit import sm120
from harness.audit.sm120 import FORBIDDEN_PTX, FORBIDDEN_SASS
from harness.results.store import load_run
from tests.conftest import OPS, cli, needs_sglang, write_profile


def _audit(tmp, args):
    r = cli(["audit", "--store", str(tmp / "runs"), *args])
    run = load_run(next((tmp / "runs").iterdir()))
    return r, run.measurements


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    prof = write_profile(tmp / "p.toml", 'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.planted_smem]\n')
    return _audit(tmp, ["--suite", str(prof), "--kernels-dir", str(OPS), "--only", "planted_smem"])


def _shared(m, impl):
    rows = m[(m["impl"] == impl) & (m["metric"] == "shared_bytes")]
    return dict(zip(rows["case"], rows["value"]))


def test_planted_kernels_are_judged_by_their_shared_memory(planted):
    r, m = planted
    assert r.returncode == 1, r.stderr[-2000:]
    (fits,) = _shared(m, "fits").values()
    (big,) = _shared(m, "smem_128k").values()
    assert 0 < fits <= sm120.SHARED_BYTES
    assert big >= 128 * 1024
    assert "smem_128k" in r.stderr and "over 101376 B" in r.stderr


def test_every_autotune_config_is_audited_not_only_the_one_that_ran(planted):
    _, m = planted
    shared = _shared(m, "every_config_too_big")
    assert len(shared) == 3  # the interpreter ran only the first; all three were compiled
    assert all(v > sm120.SHARED_BYTES for v in shared.values())
    assert {re.search(r"BK=(\d+)", c).group(1) for c in shared} == {"128", "256"}


def test_findings_say_how_they_were_compiled(planted):
    _, m = planted
    row = m[(m["impl"] == "fits") & (m["metric"] == "shared_bytes")].iloc[0]
    detail = json.loads(row["detail"])
    assert detail["target"] == "sm_120a" and detail["limit"] == sm120.SHARED_BYTES
    assert detail["constexprs"] == {"BM": 64, "BN": 64, "BK": 64}
    assert detail["signature"]["a"] == "*bf16"
    regs = m[(m["impl"] == "fits") & (m["metric"] == "registers")]["value"]
    assert len(regs) == 1 and 0 < regs.iloc[0] <= 255


def test_forbidden_instruction_patterns():
    ptx = "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {...};\n tcgen05.alloc.cta_group::1 [r1], 32;\n"
    assert FORBIDDEN_PTX.findall(ptx) == [
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16",
        "tcgen05.alloc.cta_group",
    ]
    assert FORBIDDEN_PTX.findall("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == []
    assert FORBIDDEN_SASS.findall("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4] ;  HMMA.16816.F32.BF16") == ["HGMMA"]


def test_sglang_triton_mla_kernel_fits_sm120(tmp_path):
    needs_sglang()
    r, m = _audit(tmp_path, ["--only", "mla_sparse_decode"])
    assert r.returncode == 0, r.stderr[-2000:]
    tri = m[(m["impl"] == "sglang.triton") & (m["metric"] == "shared_bytes")]
    # three autotune configs, for each specialisation the cases reached (with and without topk_length)
    assert len(tri) == 6 and (tri["status"] == "ok").all()
    assert (tri["value"] <= sm120.SHARED_BYTES).all()
    forbidden = m[(m["impl"] == "sglang.triton") & (m["metric"] == "forbidden_instructions")]
    assert len(forbidden) == 6 and (forbidden["value"] == 0).all()
    torch_path = m[(m["impl"] == "sglang.torch") & (m["case"] == "mla_sparse_decode/capture")]
    assert torch_path["value"].iloc[0] == 0  # the PyTorch fallback launches no Triton kernel


def test_sglang_fused_moe_is_captured_as_sm120_launches_it(tmp_path):
    """On SM120 SGLang launches its fused MoE with programmatic dependent launch (`USE_GDC`, whose
    `gdc_wait` the interpreter cannot run): the capture still follows the FP4-dequant path through
    both GEMMs, the activation and the sum, each with the constants SGLang launches there."""
    needs_sglang()
    prof = write_profile(
        tmp_path / "p.toml",
        'name = "one"\n[kernels]\ncases = ["tiny_t16"]\n'
        '[kernels.ops.mxfp4_moe]\nimpls = ["sglang.fp4_dequant_triton"]\n',
    )
    r, m = _audit(tmp_path, ["--suite", str(prof), "--only", "mxfp4_moe"])
    assert r.returncode == 0, r.stderr[-2000:]
    capture = m[m["case"] == "mxfp4_moe/capture"]
    assert capture["status"].tolist() == ["ok"], capture["detail"].tolist()
    shared = m[m["metric"] == "shared_bytes"]
    kernels = {c.split("/")[1] for c in shared["case"]}
    assert {"fused_moe_kernel", "act_and_mul_kernel", "_moe_sum_reduce_kernel"} <= kernels
    gemms = [c for c in shared["case"] if c.split("/")[1] == "fused_moe_kernel"]
    assert len(gemms) == 2 and all("USE_GDC=True" in c and "BLOCK_SIZE_M=64" in c for c in gemms), gemms
    assert (shared["value"] <= sm120.SHARED_BYTES).all() and (shared["status"] == "ok").all()


def test_the_instruction_check_finds_what_an_sm90_build_uses():
    """The same matmul compiled for sm_90a uses wgmma (PTX) and HGMMA (SASS); for sm_120a neither:
    the detectors look at real compiler output, not only at strings made up for a test."""
    from harness.audit.triton_kernels import compile_one

    v = {
        "module": "planted_smem",
        "file": str(OPS / "planted_smem.py"),
        "name": "matmul_kernel",
        "signature": {
            "a": "*bf16",
            "b": "*bf16",
            "c": "*fp32",
            "M": "i32",
            "N": "i32",
            "K": "i32",
            "BM": "constexpr",
            "BN": "constexpr",
            "BK": "constexpr",
        },
        "constexprs": {"BM": 128, "BN": 128, "BK": 64},
        "options": {"num_warps": 4, "num_stages": 2},
    }
    hopper, blackwell = compile_one(v, arch=90), compile_one(v, arch=120)
    assert any(x.startswith("wgmma.") for x in hopper["ptx_forbidden"]) and "HGMMA" in hopper["sass_forbidden"]
    assert blackwell["ptx_forbidden"] == [] and blackwell["sass_forbidden"] == []
    assert blackwell["target"] == "sm_120a" and blackwell["registers"] > 0


def test_a_dtype_constexpr_survives_capture_and_compiles():
    import triton.language as tl

    from harness.audit.triton_kernels import compile_one
    from harness.workers.triton_capture import _jsonable

    kept = json.loads(json.dumps(_jsonable(tl.float32)))  # as the capture file stores it
    v = {
        "module": "planted_smem",
        "file": str(OPS / "planted_smem.py"),
        "name": "fill_kernel",
        "signature": {"out": "*fp32", "N": "i32", "BLOCK": "constexpr", "DTYPE": "constexpr"},
        "constexprs": {"BLOCK": 128, "DTYPE": kept},
        "options": {"num_warps": 4, "num_stages": 1},
    }
    assert compile_one(v)["target"] == "sm_120a"

"""The SM120 audit of JIT CUDA kernels built through SGLang's own load_jit, on a machine without a GPU:
the original pull request's two failures re-created (top-k asking for 128 KB of dynamic shared memory,
a cluster path selected on SM120) are flagged with their figures, SGLang's own top-k passes."""

import json
import os

import pytest

from harness.audit import sm120
from harness.audit.cuda_kernels import _recording_link
from harness.audit.suite import _short_name
from harness.audit.toolchain import toolkit_root
from harness.results.store import load_run
from tests.conftest import OPS, cli, needs_sglang, write_profile


def needs_nvcc():
    """CI installs the `audit` extra, so there a missing compiler is an error, not a skip."""
    if toolkit_root() is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("the audit extra's CUDA compiler is not installed; CI must install it (see README)")
    pytest.skip("no CUDA compiler from PyPI (pip install -e '.[audit]')")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    needs_sglang()
    needs_nvcc()
    tmp = tmp_path_factory.mktemp("audit_cuda")
    prof = write_profile(tmp / "p.toml", 'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.planted_jit]\n')
    r = cli(["audit", "--store", str(tmp / "runs"), "--suite", str(prof), "--kernels-dir", str(OPS)])
    run = load_run(next((tmp / "runs").iterdir()))
    return r, run.measurements


def _figures(m, impl):
    rows = m[(m["impl"] == impl) & (m["case"] != "planted_jit/capture")]
    (case,) = set(rows["case"])
    return dict(zip(rows["metric"], rows["value"])), json.loads(rows["detail"].iloc[0])


def test_topk_asking_for_128k_of_dynamic_shared_memory_is_flagged(planted):
    r, m = planted
    assert r.returncode == 1, r.stderr[-3000:]
    fig, detail = _figures(m, "topk_128k")
    # SGLang's launch code opts in kSMEM + 4 bytes: 32768 entries of 4 bytes, plus 4
    assert fig["dynamic_shared_bytes"] == 32 * 1024 * 4 + 4
    assert fig["shared_bytes"] == detail["static_shared_bytes"] + fig["dynamic_shared_bytes"] > sm120.SHARED_BYTES
    assert detail["kind"] == "cuda" and detail["file"].endswith("topk_v1_128k.cuh")
    assert detail["dynamic_shared_bytes_opt_in"] == fig["dynamic_shared_bytes"]
    assert detail["dynamic_shared_from"].startswith("evaluated")
    assert "topk_128k" in r.stderr and "1 over 101376 B" in r.stderr


def test_sglang_topk_v1_fits_sm120(planted):
    _, m = planted
    fig, detail = _figures(m, "sglang.topk_v1")
    assert fig["dynamic_shared_bytes"] == 16 * 1024 * 4 + 4  # the 64 KB SGLang ships
    assert detail["static_shared_bytes"] > 0 and fig["shared_bytes"] <= sm120.SHARED_BYTES
    assert fig["cluster_launches"] == 0 and fig["forbidden_instructions"] == 0 and fig["spill_bytes"] == 0
    assert 0 < fig["registers"] <= 255
    assert detail["block"] == [1024, 1, 1] and detail["grids"] == [[2, 1, 1]] and detail["pdl"] is True
    assert detail["target"].startswith("sm_120") and "arch=compute_120" in detail["command"]
    assert "-DSGL_CUDA_ARCH=1200" in detail["command"]  # SGLang's template arguments for an SM120 host


def test_cluster_path_selected_on_sm120_is_flagged(planted):
    r, m = planted
    fig, detail = _figures(m, "cluster_on_sm120")
    assert fig["cluster_launches"] == 1 and detail["cluster"] == [1, 8, 1]
    assert fig["shared_bytes"] <= sm120.SHARED_BYTES  # flagged for the cluster alone
    assert "cluster_on_sm120" in r.stdout + r.stderr


def test_the_module_is_linked_against_the_recorder_not_libcudart():
    text = "cxx = c++\nldflags = -shared -L/x/tvm_ffi/lib -ltvm_ffi -L/cuda/lib64 -lcudart\n"
    line = _recording_link(text, "/c/rec.o").splitlines()[1]
    assert "-lcudart" not in line and "/c/rec.o" in line and "-Wl,-z,defs" in line and "-ltvm_ffi" in line


def test_kernel_names_are_shortened_outside_template_brackets():
    assert _short_name("void sglang::topk_transform_kernel<true>(sglang::TopKParams)") == "topk_transform_kernel<true>"
    assert _short_name("void f<(sglang::Mode)2>(int)") == "f<(Mode)2>"

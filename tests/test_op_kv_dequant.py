"""The KV gather + dequant op through the real CLI engine: SGLang's Triton kernel, its PyTorch gather and
its test reference are exact where bf16 is exact, each handles -1 and UE8M0 byte 0 the way the op file
says, and the bugs a gather + dequant really has are flagged."""

import pytest

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import breaches
from tests.conftest import OPS, needs_sglang, run_op

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_kv_dequant]
"""
SCALE0, NEG1 = "tiny_b3_c4x64_p64_scale0", "tiny_b2_c4x64_p64_neg1"
CLEAN = ("sglang.triton", "sglang.torch_gather", "sglang.test_reference")
FAULTS = ("scale_from_neighbour", "rope_as_fp8", "page_off_by_one")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_kv_dequant")
    r, run = run_op(tmp, PROFILE, "planted_kv_dequant")
    m = run.measurements
    ceilings = load_op_file(OPS / "planted_kv_dequant.py").ceilings
    over = breaches(m, {"planted_kv_dequant": ceilings})
    over = {(c.split("/")[1], i) for c, i in zip(over["case"], over["impl"])}
    outcome = m[m["metric"] == "outcome"]
    status = {(c.split("/")[1], i): s for c, i, s in zip(outcome["case"], outcome["impl"], outcome["status"])}
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    rows = zip(m["case"], m["impl"], m["metric"], m["value"], m["detail"])
    values = {(c.split("/")[1], i, k): (v, d) for c, i, k, v, d in rows}
    return r, over, status, values


def _v(values, case, impl, metric):
    return values[(case, impl, metric)][0]


def test_clean_paths_are_exact(measured):
    _, over, status, values = measured
    for case in (SCALE0, NEG1):
        for impl in CLEAN:
            if status[(case, impl)] != "ok":
                continue
            assert _v(values, case, impl, "mismatch") == 0, (case, impl)
            assert _v(values, case, impl, "calc_diff") == 0.0, (case, impl)
            assert (case, impl) not in over, (case, impl)
    assert status[(SCALE0, "sglang.triton")] == "ok"
    assert _v(values, SCALE0, "sglang.triton", "writes_outside_out") == 0


def test_triton_kernel_refuses_minus_one(measured):
    _, _, status, _ = measured
    assert status[(NEG1, "sglang.triton")].startswith("skipped(")
    assert "does not accept -1" in status[(NEG1, "sglang.triton")]


def test_what_minus_one_reads(measured):
    _, _, _, values = measured
    v, detail = values[(NEG1, "sglang.torch_gather", "invalid_rows_nonfinite")]
    assert v == 0 and "page 0's last slot" in detail
    v, detail = values[(NEG1, "sglang.test_reference", "invalid_rows_nonfinite")]
    assert v == 0 and "the pool's last slot" in detail


def test_ue8m0_byte0_convention_is_visible(measured):
    """The test reference flushes byte 0 to zero, every element under it; the PyTorch gather follows
    torch's float8_e8m0fnu (2^-127) and matches the oracle there."""
    _, over, _, values = measured
    v, detail = values[(SCALE0, "sglang.test_reference", "scale0_mismatch")]
    assert v > 0 and f'"flushed_to_zero": {int(v)}' in detail
    assert _v(values, SCALE0, "sglang.torch_gather", "scale0_mismatch") == 0
    assert (SCALE0, "sglang.test_reference") not in over  # a convention, not a failure
    assert _v(values, SCALE0, "sglang.test_reference", "max_abs") < 448 * 2.0**-127 * (1 + 1e-9)


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_flagged(measured, fault):
    r, over, _, values = measured
    for case in (SCALE0, NEG1):
        impl = f"planted.{fault}"
        assert _v(values, case, impl, "mismatch") > 0, (case, fault)
        assert (case, impl) in over, (case, fault)
    assert r.returncode == 1

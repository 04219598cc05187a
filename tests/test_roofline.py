"""Roofline arithmetic against figures worked by hand, and the MLA op's stated cost."""

import pytest

from harness.parity.catalogue import load_op_file
from harness.parity.roofline import Timing, peaks, roofline
from tests.conftest import ROOT


def test_roofline_by_hand():
    # 1 GB in 1 ms is 1000 GB/s; 2 TFLOP in 1 ms is 2000 TFLOP/s
    r = roofline(1000.0, 1e9, 2e12, (2000.0, 4000.0))
    assert r["gbps"] == pytest.approx(1000.0) and r["tflops"] == pytest.approx(2000.0)
    assert r["bw_frac"] == pytest.approx(0.5) and r["compute_frac"] == pytest.approx(0.5)
    # the bound is max(1e9 / 2e12 s, 2e12 / 4e15 s) = 0.5 ms against 1 ms measured
    assert r["roofline_frac"] == pytest.approx(0.5)


def test_peaks_by_name():
    assert peaks("NVIDIA RTX PRO 6000 Blackwell Workstation Edition") == (1792.0, 503.8)
    assert peaks("NVIDIA H100 80GB HBM3") == (3350.0, 989.4)
    assert peaks("NVIDIA H100 PCIe") == (2000.0, 756.0)
    assert peaks("NVIDIA H200") == (4800.0, 989.4)
    assert peaks("NVIDIA B200") == (8000.0, 2250.0)
    assert peaks("Tesla T4") is None


def test_median_and_iqr():
    t = Timing([1.0, 2.0, 3.0, 4.0, 100.0], "eager")
    assert t.median_us == 3.0 and t.iqr_us == pytest.approx(4.0 - 2.0)


def test_mla_cost_by_hand():
    op = load_op_file(ROOT / "kernels" / "mla_sparse_decode.py")
    case = op.cases()["b8_h64_swa128_c4x512"]
    nbytes, flops = op.module.cost(case)
    tokens = 128 + 512
    assert nbytes == 8 * tokens * (584 + 4) + 2 * 8 * 64 * 512 * 2
    assert flops == 4 * 8 * 64 * tokens * 512

"""The c4/c128 compressor and its cache write (kernels/kv_compress.py), checked through SGLang's readers: the
oracle against an independent formulation, the CPU path through the real CLI engine within its ceilings, and
writers that are self-consistent but wrong flagged.

SGLang has no CPU implementation of the compressor or of its store (compress_forward, c_plan.cuh and
compress_norm_rope_store are all JIT CUDA: skipped here, audited), so the faults are planted in the path that
encodes the oracle's values and goes through SGLang's readers (tests/ops/planted_kv_compress.py): it shows the
check itself able to fail."""

import math

import pytest
import torch

from harness.parity.catalogue import load_module
from tests.conftest import ROOT, needs_sglang, run_planted

PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_kv_compress]
"""


@pytest.fixture(scope="module")
def op():
    return load_module(ROOT / "kernels" / "kv_compress.py")


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The fast Walsh-Hadamard transform (natural order, unscaled) of the last dim, by recursion on halves."""
    n = x.shape[-1]
    if n == 1:
        return x
    a, b = fwht(x[..., : n // 2]), fwht(x[..., n // 2 :])
    return torch.cat([a + b, a - b], -1)


def loop_oracle(op, t: dict, case) -> torch.Tensor:
    """The definition again, one compressed token at a time: the block's positions listed by hand, the softmax
    as exp / sum with its max taken out, the norm by torch's rms_norm, the rotation as a real 2x2 matrix on
    (even, odd) dims, the indexer's Hadamard by fwht."""
    D, coff, r = op._dims(case)
    x, ape = t["kv_score"].double(), t["ape"].double()
    out, base = [], 0
    for n in case.params["lens"]:
        for k in range(n // r):
            kv, s = [], []
            if coff == 2 and k > 0:  # the previous block's overlap halves
                for i in range(r):
                    row = x[base + (k - 1) * r + i]
                    kv.append(row[:D])
                    s.append(row[2 * D : 3 * D] + ape[i, :D])
            for i in range(r):
                row = x[base + k * r + i]
                kv.append(row[(coff - 1) * D : coff * D])
                s.append(row[(2 * coff - 1) * D :] + ape[i, (coff - 1) * D :])
            kv, s = torch.stack(kv), torch.stack(s)
            e = torch.exp(s - s.max(0).values)
            pooled = (e * kv).sum(0) / e.sum(0)
            y = torch.nn.functional.rms_norm(pooled, (D,), t["norm_weight"].double(), eps=op.EPS)
            ang = torch.angle(t["freqs_cis"][k * r].to(torch.complex128))
            c, sn = torch.cos(ang), torch.sin(ang)
            re, im = y[D - 64 :: 2].clone(), y[D - 63 :: 2].clone()
            y[D - 64 :: 2], y[D - 63 :: 2] = re * c - im * sn, re * sn + im * c
            if D == op.INDEX_D:
                y = fwht(y) / math.sqrt(D)
            out.append(y)
        base += n
    return torch.stack(out)


@pytest.mark.parametrize("name", ["tiny_c4_main", "tiny_c4_indexer_adversarial", "tiny_c128_main"])
def test_oracle_agrees_with_a_loop_formulation(op, name):
    case = next(c for c in op.cases() if c.name == name)
    t = op.make_inputs(case, torch.Generator().manual_seed(3))
    want = loop_oracle(op, t, case)
    got = op.oracle(t, case)["kv"]
    assert got.shape == (sum(op.num_compressed(case)), op._dims(case)[0])
    # the table is complex64: |e^{i theta}| within 1e-7 of 1, an error the indexer's Hadamard spreads over the row
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
    if case.params["adversarial"]:
        assert torch.equal(got[3], torch.zeros_like(got[3]))  # block 3's kv is all zero: y = 0


def test_hadamard_is_sylvester_order(op):
    """The oracle's matrix equals the Sylvester recursion [[H, H], [H, -H]] and fwht, and is orthogonal / 128."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < 128:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    assert torch.equal(op.hadamard(128), h)
    x = torch.randn(5, 128, dtype=torch.float64)
    assert torch.allclose(x @ h.T, fwht(x), atol=1e-12)
    assert torch.equal(h @ h.T, 128 * torch.eye(128, dtype=torch.float64))


def test_adversarial_blocks_pool_as_stated(op):
    """Block 1 saturates on its one high score; block 2 is the plain average of its 8 positions' kv."""
    case = next(c for c in op.cases() if c.name == "tiny_c4_indexer_adversarial")
    t = op.make_inputs(case, torch.Generator().manual_seed(0))
    pooled = op.pool(t["kv_score"], t["ape"], case)
    x, D, r = t["kv_score"].double(), op.INDEX_D, 4
    assert torch.allclose(pooled[1], x[r + 1, D : 2 * D], rtol=1e-12, atol=1e-12)
    mean = torch.cat([x[r : 2 * r, :D], x[2 * r : 3 * r, D : 2 * D]]).mean(0)
    # the scores are 1.5 - ape rounded to fp32: equal to ~1e-7
    assert torch.allclose(pooled[2], mean, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_kv_compress")
    r, run, over = run_planted(tmp, PROFILE, "planted_kv_compress")
    m = run.measurements
    over = set(zip(over["impl"], over["case"].str.split("/").str[1]))
    outcome = m[m["metric"] == "outcome"]
    status = dict(zip(outcome["impl"], outcome["status"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, over, status, values


def test_oracle_bytes_is_within_its_ceilings(measured):
    """The stated layout read back by SGLang's readers: <= 0.5 fp8 ulp (+ the bf16 pre-rounding on the main KV)."""
    _, over, status, values = measured
    assert status["oracle.bytes"] == "ok"
    for case in ("tiny_c4_main", "tiny_c4_indexer_adversarial"):
        assert values[("oracle.bytes", case, "calc_diff")] < 1e-3, case
        assert ("oracle.bytes", case) not in over, case
    assert values[("oracle.bytes", "tiny_c4_main", "nope_err_ulps")] <= 0.5 + 2.0**-5
    assert values[("oracle.bytes", "tiny_c4_main", "rope_err_ulps")] <= 0.5
    assert values[("oracle.bytes", "tiny_c4_indexer_adversarial", "index_err_ulps")] <= 0.5 + 2.0**-20


def test_power_of_two_index_scale_is_caught_by_the_ulps(measured):
    """Self-consistent bytes: calc_diff stays in fp8's range, only the ulp metric sees the coarser grid."""
    _, over, _, values = measured
    case = "tiny_c4_indexer_adversarial"
    assert values[("planted.pow2_index_scale", case, "calc_diff")] < 1e-3
    assert values[("planted.pow2_index_scale", case, "index_err_ulps")] > 0.5 + 2.0**-6
    assert ("planted.pow2_index_scale", case) in over
    assert ("planted.pow2_index_scale", "tiny_c4_main") not in over  # the main KV has no such scale


def test_unscaled_hadamard_is_caught(measured):
    _, over, _, values = measured
    assert values[("planted.hadamard_unscaled", "tiny_c4_indexer_adversarial", "calc_diff")] > 0.5
    assert ("planted.hadamard_unscaled", "tiny_c4_indexer_adversarial") in over


def test_rope_position_off_by_one_is_caught(measured):
    r, over, _, values = measured
    for case in ("tiny_c4_main", "tiny_c4_indexer_adversarial"):
        assert ("planted.rope_position_off_by_one", case) in over, case
    assert values[("planted.rope_position_off_by_one", "tiny_c4_main", "rope_err_ulps")] > 10
    assert r.returncode == 1

"""The V4.1 ratio-1/2 compressor's cache writes (kernels/kv_compress_v41.py): the oracle against a token-by-token
formulation, the stated encodings against their definition on hand-made values, and through the real CLI engine
SGLang's unfused paths (Triton and torch pieces) and the oracle's bytes within the op's ceilings, read back by
SGLang's readers, while three writers with one planted error each are flagged. The fused JIT c1 / c2 / index-K
kernels are GPU only (skipped here)."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_kv_compress_v41"


@pytest.fixture(scope="module")
def op():
    return load_op_file(ROOT / "kernels" / "kv_compress_v41.py").module


def _case(op, name):
    case = next(c for c in op.cases() if c.name == name)
    return case, op.make_inputs(case, torch.Generator().manual_seed(7))


def loop_oracle(t: dict, case, op) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition again, one group at a time: the pair softmax as exp / sum written out, the norm by torch's
    rms_norm, the rotation as a real 2x2 matrix on (even, odd) dims at the group's first position."""
    r = case.params["ratio"]
    x = t["kv_in"].double()
    ys, ks, base = [], [], 0
    for n in case.params["lens"]:
        for p in range(0, n - r + 1, r):
            if r == 1:
                pooled = x[base + p]
            else:
                a, b = x[base + p], x[base + p + 1]
                ea, eb = torch.exp(a[op.D :]), torch.exp(b[op.D :])
                pooled = (ea * a[: op.D] + eb * b[: op.D]) / (ea + eb)
            lat = torch.nn.functional.rms_norm(pooled, (op.D,), t["norm_weight"].double(), eps=op.EPS)
            k = torch.nn.functional.rms_norm(t["wk"].double() @ lat, (op.IDX,), t["k_norm_weight"].double(),
                                             eps=op.EPS)  # fmt: skip
            ang = torch.angle(t["freqs_cis"][p].to(torch.complex128))
            c, s = torch.cos(ang), torch.sin(ang)
            out = []
            for v in (lat.clone(), k):
                re, im = v[-64::2].clone(), v[-63::2].clone()
                v[-64::2], v[-63::2] = re * c - im * s, re * s + im * c
                out.append(v)
            ys.append(out[0])
            ks.append(out[1])
        base += n
    return torch.stack(ys), torch.stack(ks)


@pytest.mark.parametrize("name", ["tiny_c1_prefill_decode", "tiny_c2_chunked_decode"])
def test_oracle_agrees_with_a_loop_formulation(op, name):
    case, t = _case(op, name)
    got = op.oracle(t, case)
    y, k = loop_oracle(t, case, op)
    n = len(op.groups(case))
    assert got["kv"].shape == (n, 512) and got["index_k"].shape == (n, 128)
    assert torch.allclose(got["kv"], y, rtol=1e-6, atol=1e-6 * float(y.abs().max()))
    assert torch.allclose(got["index_k"], k, rtol=1e-6, atol=1e-6 * float(k.abs().max()))


def test_groups_and_slots(op):
    """Ratio 2 pairs (2k, 2k+1) and writes at the odd token's FULL slot // 2; a trailing even token makes no group."""
    case, t = _case(op, "tiny_c2_chunked_decode")
    assert op.groups(case) == [(0, 0), (0, 2), (0, 4), (0, 6), (1, 0), (1, 2), (1, 4)]
    slots = op.out_slots(t, case)
    assert int(slots[1]) == (int(t["page_table"][0, 0]) * 256 + 3) // 2
    assert int(slots.min()) >= 128  # page 0 (the padding page) is never a target
    kinds = [k for k, _ in op.steps(case)]
    assert kinds == ["extend", "extend", "decode", "decode"]
    assert op.steps(case)[0][1][0] == (0, 0, 3)  # the first chunk ends on an even position: its pair straddles


def test_encodings_on_hand_values(op):
    """e2m1 rounding to nearest even, the e4m3 per-16 scale of compressed KV, the per-32 power-of-two index scale."""
    m = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.2, -2.6], dtype=torch.float64)
    assert op.round_e2m1(m).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -3.0]
    v = torch.zeros(1, 512, dtype=torch.float64)
    v[0, :16] = torch.linspace(-3.3, 3.3, 16)  # amax 3.3: scale e4m3(0.55) = 0.5625 (0.55 = 1.00011b x 2^-1)
    s = op.kv_scales(v)
    assert float(s[0, 0]) == 0.5625 and float(s[0, 16]) == 2.0**-9  # an all-zero block: the floor
    k = torch.zeros(1, 128, dtype=torch.float64)
    k[0, :32] = 3.0  # amax / 6 = 0.5: a power of two stays
    k[0, 32:64] = 3.1  # just above: the next one
    sc = op.index_scales(k)
    assert float(sc[0, 0]) == 0.5 and float(sc[0, 32]) == 1.0
    assert torch.equal(op.index_decoded(k)[0, :64], torch.tensor([3.0] * 32 + [3.0] * 32, dtype=torch.float64))


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    outcome = m[m["metric"] == "outcome"]
    status = dict(zip(outcome["impl"], outcome["status"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, flagged, status, values


TINY = ("tiny_c1_prefill_decode", "tiny_c2_chunked_decode")


def test_clean_paths_are_within_ceilings(measured):
    """SGLang's unfused writers (Triton and torch pieces) and the oracle's bytes: every element the stated encoding
    of the stated chain, read back by SGLang's readers."""
    _, flagged, status, values = measured
    for path in ("sglang.triton", "sglang.torch", "oracle.bytes"):
        assert status[path] == "ok", path
        for case in TINY:
            assert (path, case) not in flagged, (path, case)
            assert values[(path, case, "kv_code_mismatch")] == 0.0
            assert values[(path, case, "index_code_mismatch")] == 0.0
            assert values[(path, case, "kv_err_vs_bound")] <= 1.0
            assert values[(path, case, "calc_diff")] < 1e-2  # fp4's default ceiling


def test_inverse_rope_is_caught(measured):
    _, flagged, _, values = measured
    for case in TINY:
        assert ("planted.rope_inverse", case) in flagged, case
        assert values[("planted.rope_inverse", case, "kv_err_vs_bound")] > 2.0


def test_skipped_fake_quant_is_caught_by_the_code_mismatch(measured):
    """Within the fp8 store's rounding (the bound holds), but most elements are not the stated fp4 values."""
    _, flagged, _, values = measured
    for case in TINY:
        assert ("planted.kv_fake_quant_skipped", case) in flagged, case
        assert values[("planted.kv_fake_quant_skipped", case, "kv_err_vs_bound")] <= 1.0 + 2.0**-4
        assert values[("planted.kv_fake_quant_skipped", case, "kv_code_mismatch")] > 0.5
        assert values[("planted.kv_fake_quant_skipped", case, "index_code_mismatch")] == 0.0


def test_power_of_two_kv_scale_is_caught(measured):
    r, flagged, _, values = measured
    for case in TINY:
        assert ("planted.kv_scale_pow2", case) in flagged, case
        assert values[("planted.kv_scale_pow2", case, "kv_code_mismatch")] > 0.05
        assert not math.isnan(values[("planted.kv_scale_pow2", case, "kv_err_vs_bound")])
    assert r.returncode == 1

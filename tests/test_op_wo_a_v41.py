"""wo_a_v41 (kernels/wo_a_v41.py): the oracle by hand and against kernels/wo_a.py's FP8-checkpoint oracle,
the 128x4 scale layout and the UE8M0 rule by hand, SGLang's dispatcher picking gemv / small batch / bmm /
einsum as the op expects (the T = 8 / 9 boundary included), and through the real CLI engine the clean
MXFP8 small-batch kernel within its ceilings while two one-line edits of it are flagged."""

import math
from unittest import mock

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_wo_a_v41"


@pytest.fixture(scope="module")
def v41():
    return load_op_file(ROOT / "kernels" / "wo_a_v41.py").module


@pytest.fixture(scope="module")
def wo_a():
    return load_op_file(ROOT / "kernels" / "wo_a.py").module


def _inputs(mod, name, seed=3):
    case = next(c for c in mod.cases() if c.name == name)
    return case, mod.make_inputs(case, torch.Generator().manual_seed(seed))


def test_oracle_element_by_element(v41):
    """A few outputs as exact sums of products (math.fsum over the 4096 terms), on the rank's heads of the
    padded attention output: group g is heads 8g..8g+7, each 512 values."""
    case, t = _inputs(v41, "tiny_t1_r16_decode_padded")
    y = v41.oracle(t, case)["y"]
    assert y.shape == (1, 2, 16)
    assert t["o_attn"].shape == (1, 64, 512) and t["o_attn"][:, 16:].isnan().all()  # the padding
    for g, r in ((0, 0), (1, 7), (1, 15)):
        o = t["o_attn"][0, 8 * g : 8 * g + 8].reshape(-1).double().tolist()
        w = t["wo_a"][g, r].double().tolist()
        assert y[0, g, r].item() == pytest.approx(math.fsum(a * b for a, b in zip(o, w)), rel=1e-12, abs=1e-15)


def test_oracle_is_wo_as_on_the_fp8_checkpoint(v41, wo_a):
    """Same seed, same case parameters: kernels/wo_a.py's oracle from the block-FP8 checkpoint gives the
    same y (the dequantized weight is exact in bf16); and the zero token gives zeros."""
    case, t = _inputs(v41, "tiny_t9_verify")
    theirs = wo_a.oracle(wo_a.make_inputs(case, torch.Generator().manual_seed(3)), case)["y"]
    ours = v41.oracle(t, case)["y"]
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    assert float(ours[9 // 2].abs().max()) == 0.0


def test_swizzled_offsets_by_hand(v41):
    """FlashInfer's 128x4 layout: rows < 32 as SGLang's kernel stores them, `(col // 4) * 512 + row * 16 +
    col % 4`; row 33 col 5 is tile 1 (512) + ((33 % 32) * 4 + 33 // 32) * 4 (20) + 1 = 533; row 130 col 0
    is the second 128-row tile (16 tiles of 512 = 8192) + ((130 % 32) * 4 + 0) * 4 (32) = 8224."""
    off = v41.swizzled_offsets(131)
    for row in range(8):
        for col in range(64):
            assert off[row, col] == (col // 4) * 512 + row * 16 + col % 4
    assert off[33, 5] == 533 and off[130, 0] == 8224
    assert len(set(off[:128].reshape(-1).tolist())) == 128 * 64  # a permutation of the first tile


def test_dequant_mxfp8_by_hand(v41):
    """Codes and scale bytes placed by hand: each value is its code times 2^(byte - 127) of its block."""
    gen = torch.Generator().manual_seed(1)
    T = 3
    codes = (torch.randn(T, 2048, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    bytes_ = torch.randint(100, 150, (T, 64), generator=gen)
    scales = torch.zeros(8192, dtype=torch.uint8)
    for row in range(T):
        for col in range(64):
            scales[(col // 4) * 512 + row * 16 + col % 4] = int(bytes_[row, col])
    y = v41.dequant_mxfp8(codes, scales).view(T, 2048)
    for row, i in ((0, 0), (1, 33), (2, 2047), (2, 1000)):
        want = float(codes[row, i].float()) * 2.0 ** (int(bytes_[row, i // 32]) - 127)
        assert float(y[row, i]) == want  # exact in bf16


def test_ue8m0_rule_by_hand(v41):
    """The smallest power of two s with amax / s <= 448: amax 448 -> 2^0 (byte 127; an exact power may
    round either way), 500 -> 2^1 (128), 1 -> 2^-8 (448 * 2^-9 < 1 <= 448 * 2^-8: 119), 0 -> byte 0."""
    y = torch.zeros(1, 2048, dtype=torch.float64)
    for block, amax in ((0, 448.0), (1, 500.0), (2, 1.0)):
        y[0, block * 32 + 5] = -amax
        y[0, block * 32 + 6] = amax / 3
    lo, hi = v41.ue8m0_candidates(y)
    assert (lo[0, :4].tolist(), hi[0, :4].tolist()) == ([127, 128, 119, 0], [128, 128, 119, 0])


@pytest.mark.parametrize(
    "params, branch",
    [
        ({"T": 1, "mode": "decode"}, "gemv"),
        ({"T": 1, "mode": "decode", "R": 16}, "einsum"),  # the gate wants the exact shape
        ({"T": 1, "mode": "verify"}, "bmm"),
        ({"T": 2, "mode": "verify"}, "small_batch"),
        ({"T": 8, "mode": "verify", "fuse_mxfp8": True}, "small_batch_mxfp8"),
        ({"T": 9, "mode": "verify"}, "bmm"),
        ({"T": 385, "mode": "verify"}, "bmm"),  # past the fast gate: the verify bmm
        ({"T": 4, "mode": "decode"}, "einsum"),
        ({"T": 4095, "mode": "prefill"}, "einsum"),
        ({"T": 4096, "mode": "prefill"}, "bmm"),
    ],
)
def test_sglangs_dispatcher_picks_the_expected_branch(v41, params, branch, monkeypatch):
    """SGLang's `_apply_wo_a_bf16_matmul(fast_path=True)` as on SM120 (the platform answers as the CPU runs
    give it: TRITON_INTERPRET=1), with its kernels stubbed (the CLI cases run the real ones): what it
    calls is `expected_branch`'s answer."""
    needs_sglang()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert v41.expected_branch(v41._case("x", **params)) == branch
    if params["T"] > 512:
        return  # the rule above; the dispatcher's own answer on the tiny sizes below
    case = v41._case("x", **params)
    t = v41.make_inputs(case, torch.Generator().manual_seed(0))
    m = v41._model()

    def stub(o, w):
        return torch.zeros(o.shape[0], 2, w.shape[1], dtype=torch.bfloat16)

    stubs = {"wo_a_bf16_gemv": stub, "wo_a_bf16_small_batch": stub}
    mx = (torch.zeros(case.params["T"], 2048, dtype=torch.float8_e4m3fn), torch.zeros(8192, dtype=torch.uint8))
    stubs["wo_a_bf16_small_batch_mxfp8"] = lambda o, w: mx
    with mock.patch.multiple(m, **stubs):
        out = (v41.sglang_dispatch_mxfp8 if params.get("fuse_mxfp8") else v41.sglang_dispatch)(t, case)
    assert v41.BRANCHES[int(out["branch"][0])] == branch
    if branch in ("bmm", "einsum"):  # the real torch computation: one bf16 rounding from the oracle
        y, ref = out["y"].double(), v41.oracle(t, case)["y"]
        assert 0 < float(((y - ref).norm() / ref.norm()) ** 2) < 1e-5


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    ok = m[(m["reference"].isna() | (m["reference"] == "fp64")) & (m["status"] == "ok")]
    values = {(i, k): v for i, k, v in zip(ok["impl"], ok["metric"], ok["value"])}
    return r, flagged, values


CASE = "tiny_t8_verify_padded_mxfp8"


def test_clean_mxfp8_kernel_is_within_its_ceilings(measured):
    """e4m3's step on top of one bf16 rounding: ~3e-4, under the fp8 ceiling (1e-3) and far over bf16's."""
    _, flagged, values = measured
    impl = "sglang.small_batch_mxfp8"
    assert 1e-5 < values[(impl, "calc_diff")] < 1e-3
    for metric in ("mxfp8_scale_mismatch", "mxfp8_padding_scales", "nonfinite_mismatch", "stray_writes"):
        assert values[(impl, metric)] == 0, metric
    assert (impl, CASE) not in flagged


def test_dense_row_stride_is_flagged(measured):
    """Rows 1.. of the padded output read the NaN padding (then other tokens' heads)."""
    _, flagged, values = measured
    assert values[("planted.rows_dense", "nonfinite_mismatch")] > 0
    assert ("planted.rows_dense", CASE) in flagged


def test_scale_row_pitch_is_flagged(measured):
    r, flagged, values = measured
    assert values[("planted.scale_pitch4", "mxfp8_scale_mismatch")] > 0
    assert ("planted.scale_pitch4", CASE) in flagged
    assert r.returncode == 1

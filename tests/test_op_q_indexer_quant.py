"""The C4 indexer query (RoPE, 128-point Hadamard, FP8 with the scale folded into the weights): the
fp64 oracle against a butterfly Hadamard and a complex-number RoPE, its scale convention on the edge
rows, and through the CLI engine SGLang's CPU-runnable pieces within the fp8 ceilings while
single-line edits of their sources are flagged. The production kernel is JIT CUDA (skipped here,
audited by `sm120-harness audit --only q_indexer_quant`)."""

import pytest
import torch

from harness.parity.op import load_module
from tests.conftest import ROOT, needs_sglang, run_planted

OP = load_module(ROOT / "kernels" / "q_indexer_quant.py")
ROPE = load_module(ROOT / "kernels" / "q_norm_rope.py")
PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_q_indexer_quant]
"""


def _inputs(name: str, seed: int = 1) -> tuple[dict, object]:
    case = next(c for c in OP.cases() if c.name == name)
    return OP.make_inputs(case, torch.Generator().manual_seed(seed)), case


def fwht(x: torch.Tensor) -> torch.Tensor:
    """The in-place fast Walsh-Hadamard transform over the last dim (natural order), then 1/sqrt(n)."""
    x = x.clone()
    n, h = x.shape[-1], 1
    while h < n:
        y = x.unflatten(-1, (n // (2 * h), 2, h))
        a, b = y[..., 0, :].clone(), y[..., 1, :].clone()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        x = y.flatten(-3)
        h *= 2
    return x / n**0.5


def test_hadamard_is_orthonormal_and_the_butterflies():
    H = OP.hadamard()
    assert torch.equal(H, H.T)
    assert torch.allclose(H @ H, torch.eye(OP.DIM, dtype=torch.float64), atol=1e-12)
    x = torch.randn(5, OP.DIM, dtype=torch.float64)
    assert torch.allclose(x @ H, fwht(x), atol=1e-12)


def test_oracle_matches_complex_rope_then_butterflies():
    t, case = _inputs("tiny_t5_edge")
    q = t["q"].double()
    angle = t["positions"].double()[:, None] * ROPE.yarn_freqs(case.params["table"])[None, :]
    rot = torch.polar(torch.ones_like(angle), angle)[:, None, :]
    tail = torch.view_as_complex(q[..., -OP.ROPE_DIM :].contiguous().view(*q.shape[:2], -1, 2)) * rot
    want = fwht(torch.cat([q[..., : -OP.ROPE_DIM], torch.view_as_real(tail).flatten(-2)], -1))
    got = OP.oracle(t, case)["q"]
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()  # the table's fp32 entries


def test_scale_convention_on_the_edge_rows():
    """weights_out = weight * d^-0.5 * h^-0.5 * max(amax, 1e-4) / 448: the padded and the 1e-6 token sit
    on the floor, the one-hot token's 128 values all have magnitude 3 / sqrt(128)."""
    t, case = _inputs("tiny_t5_edge")
    out = OP.oracle(t, case)
    scale = out["weights_out"].squeeze(-1) / (t["weight"].double() * 128**-0.5 * 64**-0.5)
    floor = torch.full_like(scale[1], 1e-4 / 448)
    assert torch.allclose(scale[1], floor, rtol=1e-12) and torch.allclose(scale[2], floor, rtol=1e-12)
    assert torch.allclose(out["q"][4].abs(), torch.full_like(out["q"][4], 3 / 128**0.5), rtol=1e-12)
    assert torch.allclose(scale[4], torch.full_like(scale[4], 3 / 128**0.5 / 448), rtol=1e-12)
    assert (scale[3] > 1.0).all()  # the token at 1000


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_q_indexer_quant")
    r, run, over = run_planted(tmp, PROFILE, "planted_q_indexer_quant")
    m = run.measurements
    over = set(zip(over["impl"], over["case"].str.split("/").str[1], over["metric"]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, over, values


CASES = ("tiny_t2", "tiny_t5_edge")


def test_clean_pieces_are_within_the_fp8_ceilings(measured):
    _, over, values = measured
    for case in CASES:
        # e4m3 rounding of every value: ~3.5e-4, under fp8's 1e-3
        assert 1e-4 < values[("sglang.triton_pieces", case, "calc_diff")] < 1e-3, case
        assert values[("sglang.triton_pieces", case, "worst_row_calc_diff")] < 5e-3, case
        assert values[("sglang.triton_pieces", case, "scale_rel_err")] < 2.0**-16, case
        assert values[("sglang.triton_pieces", case, "nonfinite_mismatch")] == 0, case
        assert not any(o[0] == "sglang.triton_pieces" for o in over)


def test_amax_floor_is_caught_by_the_scale_convention_only(measured):
    _, over, values = measured
    impl = "planted.amax_floor_1e-10"
    # no row of tiny_t2 is under 1e-4: nothing changes
    assert values[(impl, "tiny_t2", "scale_rel_err")] < 2.0**-16
    # the 1e-6 token's scale is its own amax / 448, not 1e-4 / 448; its dequantized rows are still right
    assert values[(impl, "tiny_t5_edge", "scale_rel_err")] > 0.9
    assert values[(impl, "tiny_t5_edge", "calc_diff")] < 1e-3
    assert (impl, "tiny_t5_edge", "scale_rel_err") in over
    assert {o for o in over if o[0] == impl} == {(impl, "tiny_t5_edge", "scale_rel_err")}


def test_rope_backwards_is_caught_by_the_drift(measured):
    r, over, values = measured
    for case in CASES:
        assert values[("planted.rope_backwards", case, "calc_diff")] > 1e-2, case
        assert ("planted.rope_backwards", case, "calc_diff") in over
    assert r.returncode == 1

"""The attention query's norm + RoPE (and the inverse RoPE on the output): the fp64 oracle against
formulations of its own and SGLang's RoPE table, forward-then-inverse as the identity, and through
the CLI engine SGLang's CPU-runnable Triton paths within the bf16 ceilings while single-line edits of
their source are flagged. The production kernels are JIT CUDA (skipped here, audited by
`sm120-harness audit --only q_norm_rope`)."""

import math

import pytest
import torch

from harness.parity.op import load_by_path, load_module, require_root
from tests.conftest import ROOT, needs_sglang, run_planted

OP = load_module(ROOT / "kernels" / "q_norm_rope.py")
PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_q_norm_rope]
"""


def _inputs(name: str, seed: int = 1) -> tuple[dict, object]:
    case = next(c for c in OP.cases() if c.name == name)
    return OP.make_inputs(case, torch.Generator().manual_seed(seed)), case


def test_oracle_matches_a_complex_formulation():
    """RMSNorm written as x / rms, and the rotation as complex multiplication by polar(1, pos * freq)
    with the angle formed in float64 (not read from the fp32 table): equal to the table's rounding."""
    for name in ("tiny_t4_h32_norm_rope_edge", "tiny_t3_h32_rope_inverse"):
        t, case = _inputs(name)
        x = t["x"].double()
        inverse = case.params["fn"] == "rope_inverse"
        if not inverse:
            rms = (x.pow(2).sum(-1, keepdim=True) / OP.HEAD_DIM + OP.EPS).sqrt()
            x = x / rms
        angle = t["positions"].double()[:, None] * OP.yarn_freqs(case.params["table"])[None, :]
        rot = torch.polar(torch.ones_like(angle), -angle if inverse else angle)[:, None, :]
        tail = torch.view_as_complex(x[..., -OP.ROPE_DIM :].contiguous().view(*x.shape[:2], -1, 2)) * rot
        want = torch.cat([x[..., : -OP.ROPE_DIM], torch.view_as_real(tail).flatten(-2)], -1)
        got = OP.oracle(t, case)["out"]
        scale = want.abs().max()
        assert (got - want).abs().max() <= 1e-6 * scale, name  # fp32 table entries: ~6e-8 each


def test_edge_rows_follow_the_definition():
    """The padded row stays 0, the tiny row is x / sqrt(eps) (eps dominates), the large row has rms 1."""
    t, case = _inputs("tiny_t4_h32_norm_rope_edge")
    out = OP.oracle(t, case)["out"]
    assert out[1].abs().max() == 0
    ratio = out[2, :, : OP.NOPE_DIM] / t["x"][2, :, : OP.NOPE_DIM].double()
    ms = t["x"][2].double().pow(2).mean(-1, keepdim=True)
    assert torch.allclose(ratio, (ms + OP.EPS).rsqrt().expand_as(ratio), rtol=1e-12)
    assert ratio.min() > 0.8 / math.sqrt(OP.EPS)  # x^2 ~ 1e-8 is well under eps
    assert torch.allclose(out[3].pow(2).mean(-1), torch.ones(out.shape[1], dtype=torch.float64), rtol=1e-9)


def test_table_matches_sglangs_precompute_freqs_cis():
    """This file's table (float64 angles) against SGLang's precompute_freqs_cis with the same YaRN
    parameters: they differ only by SGLang's fp32 angle (pos * freq rounded), ~pos * 2^-24 rad."""
    needs_sglang()
    rope = load_by_path(OP.ROPE_PY)
    rows = 8192
    for table, (base, original, factor, beta_fast, beta_slow) in OP.TABLES.items():
        sg = rope.precompute_freqs_cis(OP.ROPE_DIM, rows, original, base, factor, beta_fast, beta_slow)
        ours = OP.rope_table(table, rows)
        diff = (torch.view_as_real(sg).flatten(-2) - ours).abs().max()
        assert diff < 2e-3, table
        assert diff > 0, table  # they are different computations


def test_forward_then_inverse_is_the_identity(monkeypatch):
    """The oracle's rotation undone exactly, and SGLang's Triton rope (fp32) to fp32 rounding."""
    t, case = _inputs("tiny_t3_h32_rope_inverse")
    x = t["x"].double()
    back = OP.rotate(OP.rotate(x, t["freqs"], t["positions"]), t["freqs"], t["positions"], inverse=True)
    # |cos + i sin|^2 of an fp32 entry is 1 within ~1e-7
    assert (back - x).abs().max() <= 1e-6 * x.abs().max()
    needs_sglang()
    # here, not in a worker: Triton decides at decoration whether a kernel is interpreted, so this
    # process loads its own copy of rope.py with the interpreter on
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rope = load_module(require_root() / "sglang" / OP.ROPE_PY)
    fc = OP.freqs_cis(t["freqs"])
    # the per-token kernel (the flat-row one calls tl.flip, a jit function of triton's own, decorated
    # when triton was first imported here, without the interpreter)
    y = t["x"].float()
    rope.apply_rotary_emb_triton(y[..., -OP.ROPE_DIM :], fc, positions=t["positions"])
    assert (y[..., -OP.ROPE_DIM :] - t["x"][..., -OP.ROPE_DIM :].float()).abs().max() > 0.1
    rope.apply_rotary_emb_triton(y[..., -OP.ROPE_DIM :], fc, positions=t["positions"], inverse=True)
    assert (y.double() - x).abs().max() <= 1e-5 * x.abs().max()


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_q_norm_rope")
    r, run, over = run_planted(tmp, PROFILE, "planted_q_norm_rope")
    m = run.measurements
    over = set(zip(over["impl"], over["case"].str.split("/").str[1]))
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}
    return r, over, values


NORM_CASES = ("tiny_t3_h32_norm_rope_swa", "tiny_t4_h32_norm_rope_edge")
ROPE_CASE = "tiny_t3_h32_rope_inverse"


def test_clean_triton_paths_are_within_the_bf16_ceilings(measured):
    _, over, values = measured
    runs = [("sglang.triton_norm_rope", c) for c in NORM_CASES]
    runs += [("sglang.triton_rope", ROPE_CASE), ("sglang.triton_rope_flat", ROPE_CASE)]
    for impl, case in runs:
        # one bf16 rounding, truncated by Triton's interpreter: ~5e-6 at most
        assert 0 < values[(impl, case, "calc_diff")] < 1e-5, (impl, case)
        assert values[(impl, case, "worst_row_calc_diff")] < 5e-5, (impl, case)
        assert values[(impl, case, "nonfinite_mismatch")] == 0, (impl, case)
        assert (impl, case) not in over, (impl, case)


def test_norm_over_the_nope_dims_is_flagged(measured):
    _, over, values = measured
    for case in NORM_CASES:
        # every row scaled by sqrt(512 / 448): calc_diff = 1 - 2a / (1 + a^2), a = 1.069, ~2.2e-3
        assert values[("planted.norm_over_nope_dims", case, "calc_diff")] == pytest.approx(2.2e-3, rel=0.1)
        assert ("planted.norm_over_nope_dims", case) in over


def test_eps_outside_the_sqrt_is_flagged_on_the_tiny_row_only(measured):
    _, over, values = measured
    # O(1) rows: 1 / (rms + 1e-6) is 1 / sqrt(rms^2 + 1e-6) to 1e-6: nothing to see
    assert values[("planted.eps_outside_sqrt", "tiny_t3_h32_norm_rope_swa", "worst_row_calc_diff")] < 5e-5
    assert ("planted.eps_outside_sqrt", "tiny_t3_h32_norm_rope_swa") not in over
    # the row at 1e-4: 1 / (1e-4 + 1e-6) against 1 / sqrt(1e-8 + 1e-6), ten times too large
    assert values[("planted.eps_outside_sqrt", "tiny_t4_h32_norm_rope_edge", "worst_row_calc_diff")] > 0.5
    assert ("planted.eps_outside_sqrt", "tiny_t4_h32_norm_rope_edge") in over


def test_inverse_rotation_sign_is_flagged(measured):
    r, over, values = measured
    assert values[("planted.inverse_imag_sign", ROPE_CASE, "worst_row_calc_diff")] > 1e-2
    assert ("planted.inverse_imag_sign", ROPE_CASE) in over
    assert r.returncode == 1

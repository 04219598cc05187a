"""The standalone mHC post (kernels/mhc_post.py): the oracle against hand-checked facts and SGLang's
torch reference in float64; through the CLI engine, the reference within the bf16 ceilings and one-line
faults in copies of its source flagged.

`mhc_post` is TileLang, which needs a GPU (the SM120 audit lowers it without one): the planted faults
are in the reference (tests/ops/planted_mhc_post.py), which shows the checks themselves can fail."""

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted


@pytest.fixture(scope="module")
def op():
    return load_op_file(ROOT / "kernels" / "mhc_post.py").module


def _inputs(op, name="tiny_t3"):
    case = next(c for c in op.cases() if c.name == name)
    return case, op.make_inputs(case, torch.Generator().manual_seed(0))


def test_oracle_is_the_definition(op):
    """comb = I and post = 0 keep the streams; post = 1 and comb = 0 give x in every stream; a comb with
    its one 1 at [k=0, j=2] puts stream 0 into stream 2 (comb is read [from, to])."""
    case, t = _inputs(op)
    T = t["x"].shape[0]
    keep = dict(t, post=torch.zeros(T, 4), comb=torch.eye(4).expand(T, 4, 4).contiguous())
    assert torch.equal(op.oracle(keep, case)["residual"], t["residual"].double())
    only_x = dict(t, post=torch.ones(T, 4), comb=torch.zeros(T, 4, 4))
    assert torch.equal(op.oracle(only_x, case)["residual"], t["x"].double()[:, None].expand(T, 4, -1))
    move = torch.zeros(T, 4, 4)
    move[:, 0, 2] = 1.0
    out = op.oracle(dict(t, post=torch.zeros(T, 4), comb=move), case)["residual"]
    assert torch.equal(out[:, 2], t["residual"][:, 0].double()) and (out[:, 0] == 0).all()


def test_oracle_agrees_with_sglangs_reference_in_float64(op):
    needs_sglang()
    from harness.parity.op import import_module

    mhc = import_module("sglang.kernels.ops.layernorm.mhc")
    for name in ("tiny_t3", "tiny_t2_large"):
        case, t = _inputs(op, name)
        want = mhc._mhc_post_torch(
            t["x"].double(), t["residual"].double(), t["post"].double().unsqueeze(-1), t["comb"].double()
        )
        got = op.oracle(t, case)["residual"]
        assert torch.allclose(got, want, rtol=1e-13, atol=1e-13 * float(want.abs().max())), name


def test_inputs_are_in_the_production_layout(op):
    case, t = _inputs(op)
    assert t["x"].shape == (3, 4096) and t["x"].dtype == torch.bfloat16
    assert t["residual"].shape == (3, 4, 4096) and t["residual"].dtype == torch.bfloat16
    assert t["post"].shape == (3, 4) and t["comb"].shape == (3, 4, 4) and t["comb"].dtype == torch.float32
    assert (t["x"][-1] == 0).all() and (t["residual"][-1] == 0).all()  # the padding row
    assert torch.allclose(t["comb"].sum(-1), torch.ones(3, 4), atol=1e-3)  # Sinkhorn's output


CLEAN = ["sglang.torch", "planted.clean_copy"]
FAULTS = ["comb_transposed", "post_dropped", "sum_over_wrong_axis"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    needs_sglang()
    op = "planted_mhc_post"
    r, run, over = run_planted(
        tmp_path_factory.mktemp(op), f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{op}]\n', op
    )
    m = run.measurements
    flagged = {impl: sorted(set(g["metric"])) for impl, g in over.groupby("impl")}
    outcome = m[m["metric"] == "outcome"]
    status = {impl: set(g["status"]) for impl, g in outcome.groupby("impl")}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values, status


@pytest.mark.parametrize("impl", CLEAN)
def test_clean_paths_are_within_the_bf16_ceilings(planted, impl):
    _, flagged, values, status = planted
    assert status[impl] == {"ok"} and impl not in flagged
    for case in ("tiny_t3", "tiny_t2_large"):
        # one bf16 rounding of the output: ~1.4e-6, far from 0 and from the 1e-5 ceiling
        assert 1e-8 < values[(impl, case, "calc_diff")] < 3e-6
        assert values[(impl, case, "worst_row_calc_diff")] < 5e-6


def test_tilelang_path_is_skipped_with_its_reason(planted):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the TileLang path runs")
    assert planted[3]["sglang.tilelang"] == {"skipped(needs a CUDA GPU)"}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_flagged(planted, fault):
    r, flagged, values, _ = planted
    assert "calc_diff" in flagged.get(f"planted.{fault}", []), f"{fault} passed every ceiling"
    assert values[(f"planted.{fault}", "tiny_t3", "calc_diff")] > 1e-3
    assert r.returncode == 1

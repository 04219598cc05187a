"""kernels/topk_transform.py: its inputs have the production layout and real ties, its oracle is the
exact top-k, its metrics judge what the attention reads, and through the real CLI SGLang's torch top-k
passes while each planted bug is flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import breaches
from tests.conftest import ROOT, needs_sglang, run_op

op = load_op_file(ROOT / "kernels" / "topk_transform.py")
mod = op.module
K = mod.TOPK
PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_topk_transform]
"""
# fault -> a metric that must be past its limit
FAULTS = {
    "k_minus_one": "tie_recall",
    "offset_page_swap": "out_of_range_indices",
    "lengths_ignored": "short_row_errors",
    "page_off_by_one": "raw_index_mismatch",
    "stale_tail": "duplicate_indices",
}


def _inputs(name: str, seed: int = 0):
    case = op.cases()[name]
    return case, mod.make_inputs(case, torch.Generator().manual_seed(seed))


def _values(outputs, t, case) -> dict[str, float]:
    return {m.name: m.value for m in mod.metrics(outputs, mod.oracle(t, case), t, case)}


def test_cases_cover_the_flash_shapes_and_the_edges():
    cases = op.cases().values()
    flash = [c for c in cases if "flash" in c.tags]
    assert {c.params["B"] for c in flash} == {1, 8, 32, 128}
    assert max(max(mod.lengths(c)) for c in flash) == 16384
    assert {c.params["scores"] for c in cases} == {"fp32", "bf16", "coarse"}
    assert {c.params["tail"] for c in cases} == {"neginf", "zero", "garbage"}
    edges = {n for c in flash for n in mod.lengths(c)}
    assert {1, 300, K, K + 1} <= edges
    assert any(max(mod.lengths(c)) <= K for c in flash)  # a batch of short rows only


def test_inputs_have_the_production_layout():
    case, t = _inputs("tiny_b4_mixed2048_garbage")
    lens = mod.lengths(case)
    table = t["page_table"]
    assert t["scores"].dtype == torch.float32 and t["scores"].shape == (4, table.shape[1] * 64)
    assert t["seq_lens"].tolist() == lens and t["seq_lens"].dtype == torch.int32 and table.dtype == torch.int32
    used = torch.cat([table[b, : math.ceil(n / 64)] for b, n in enumerate(lens)])
    assert used.unique().numel() == used.numel() and int(used.min()) >= 1
    valid = torch.arange(t["scores"].shape[1])[None, :] < t["seq_lens"][:, None]
    assert bool(t["scores"][valid].isfinite().all())
    tail = t["scores"][~valid]
    assert bool(tail.isnan().any()) and bool((tail == math.inf).any())  # unwritten memory
    assert float(tail.nan_to_num(nan=1e9).min()) > float(t["scores"][valid].max())


def test_bf16_scores_tie_at_the_kth_place():
    case, t = _inputs("tiny_b3_equal4096_bf16ties")
    row = t["scores"][0]
    kth = torch.sort(row, descending=True).values[K - 1]
    assert int((row == kth).sum()) > 1
    assert torch.equal(row, row.bfloat16().float())


def test_oracle_is_the_exact_top_k():
    case, t = _inputs("tiny_b4_mixed2048_garbage")
    ref = mod.oracle(t, case)
    for b, n in enumerate(mod.lengths(case)):
        raw = ref["raw_indices"][b].long()
        if n <= K:
            assert raw[:n].tolist() == list(range(n)) and bool((raw[n:] == -1).all())
        else:
            assert torch.equal(torch.sort(raw).values, torch.sort(t["scores"][b, :n].topk(K).indices).values)
        page = t["page_table"][b].long()[raw.clamp(min=0) // 64] * 64 + raw.clamp(min=0) % 64
        assert torch.equal(ref["page_indices"][b].long(), torch.where(raw >= 0, page, -1))
    perfect = {"recall": 1, "tie_recall": 1, "worst_row_tie_recall": 1, "score_mass_recall": 1}
    assert _values(ref, t, case) == {**{k: 0 for k in mod.CEILINGS if k not in perfect}, **perfect}


def test_ties_count_for_tie_recall_not_for_recall():
    case, t = _inputs("tiny_b3_equal4096_bf16ties")
    ref = mod.oracle(t, case)
    row = t["scores"][0].double()
    kth = torch.sort(row, descending=True).values[K - 1]
    inside = ref["raw_indices"][0].long()
    outside = [i for i in (row == kth).nonzero().flatten().tolist() if i not in set(inside.tolist())]
    assert outside, "no tie left out of the exact top-k"
    slot = int((row[inside] == kth).nonzero()[0])
    swapped = {k: v.clone() for k, v in ref.items()}
    swapped["raw_indices"][0, slot] = outside[0]
    swapped["page_indices"][0, slot] = int(t["page_table"][0, outside[0] // 64]) * 64 + outside[0] % 64
    v = _values(swapped, t, case)
    assert v["recall"] < 1 and v["tie_recall"] == 1 and v["score_mass_recall"] == pytest.approx(1, abs=1e-12)


def test_decode_row_flags_every_kind_of_bad_slot():
    table = torch.tensor([5, 9, 0], dtype=torch.int64)
    n = 100  # pages 5 and 9 hold positions 0..99
    slots = torch.tensor([5 * 64 + 3, 9 * 64 + 35, 9 * 64 + 36, 7 * 64, -1, -5])
    pos, state = mod.decode_row(slots, table, n)
    assert pos.tolist() == [3, 99, -1, -1, -1, -1]
    assert state.tolist() == [1, 1, -1, -1, 0, -1]  # past the length, a page not the row's, -1, garbage


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_topk_transform")
    r, run = run_op(tmp, PROFILE, "planted_topk_transform")
    m = run.measurements
    over = breaches(m, {"planted_topk_transform": op.ceilings})
    return r, m, over


def test_clean_torch_topk_passes(measured):
    _, m, over = measured
    rows = m[(m["impl"] == "sglang.torch") & (m["reference"] == "fp64")]
    assert set(rows["status"]) == {"ok"} and len(rows["case"].unique()) == 2
    values = rows.groupby("metric")["value"]
    assert values.min()["tie_recall"] == 1.0 and values.max()["out_of_range_indices"] == 0
    assert "sglang.torch" not in set(over["impl"])


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_flagged(measured, fault):
    r, _, over = measured
    flagged = set(over[over["impl"] == f"planted.{fault}"]["metric"])
    assert FAULTS[fault] in flagged, f"{fault}: flagged only {sorted(flagged)}"
    assert r.returncode == 1

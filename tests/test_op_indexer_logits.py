"""kernels/indexer_logits.py: its inputs have SGLang's layout, its oracle agrees with SGLang's own
reference, and through the real CLI the SM120 torch fallback passes while each planted bug is flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import breaches
from harness.workers.sglang_src import import_module
from tests.conftest import ROOT, needs_sglang, run_op

op = load_op_file(ROOT / "kernels" / "indexer_logits.py")
mod = op.module
PROFILE = """
name = "planted"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_indexer_logits]
"""
FAULTS = ["scale_off_by_one", "page_off_by_one", "partial_page_dropped", "last_head_dropped"]


def _inputs(name: str, seed: int = 0):
    case = op.cases()[name]
    return case, mod.make_inputs(case, torch.Generator().manual_seed(seed))


def test_cases_cover_the_flash_shapes():
    flash = [c for c in op.cases().values() if "flash" in c.tags]
    assert {c.params["B"] for c in flash} == {1, 8, 32, 128}
    assert max(max(mod.lengths(c)) for c in flash) == 16384
    assert {c.params["lengths"] for c in flash} == {"mixed", "equal"}
    for c in op.cases().values():
        assert min(mod.lengths(c)) >= 1


def test_inputs_have_the_production_layout():
    case, t = _inputs("tiny_b5_mixed130_widetable")
    B, lens = case.params["B"], mod.lengths(case)
    assert t["q_fp8"].shape == (B, 1, 64, 128) and t["q_fp8"].dtype == torch.float8_e4m3fn
    assert t["kv_cache"].shape[1:] == (64, 1, 132) and t["kv_cache"].dtype == torch.uint8
    assert t["weights"].shape == (B, 64) and t["weights"].dtype == torch.float32
    assert t["seq_lens"].tolist() == lens and t["seq_lens"].dtype == torch.int32
    table = t["page_table"]
    assert table.dtype == torch.int32 and table.shape[1] == math.ceil(max(lens) / 64) + 2
    used = torch.cat([table[b, : math.ceil(n / 64)] for b, n in enumerate(lens)])
    assert used.unique().numel() == used.numel() and int(used.min()) >= 1  # distinct, page 0 is padding
    assert not torch.equal(used, torch.arange(1, used.numel() + 1, dtype=torch.int32))  # scattered
    assert bool((t["q_fp8"].float().abs().amax(-1) == 448).all())  # each (token, head) row uses e4m3's range


def test_scales_are_amax_over_448_as_sglangs_writer_stores_them():
    """fused_norm_rope_v2.cuh's indexer store: scale = max(1e-4, amax) / 448 in fp32 (not a power of
    two), values k * (1 / scale) rounded to e4m3; a token's largest value lands on 448."""
    k = torch.randn(128, 128, generator=torch.Generator().manual_seed(0)) * 3
    k[70] = 1e-6  # under the floor: its scale is 1e-4 / 448
    cache = mod.fused_cache(k)
    page = cache[1].reshape(-1)
    scales = page[64 * 128 :].view(torch.float32)
    amax = k[64:].abs().amax(-1)
    assert torch.equal(scales, torch.clamp(amax, min=1e-4) / 448.0)
    values = page[: 64 * 128].view(torch.float8_e4m3fn).reshape(64, 128).float()
    # token-major and round-to-nearest e4m3: within half an ulp, 2^-4 relative for normals and
    # 2^-10 * scale absolute for subnormals (where a relative bound alone fails near zero)
    err = (values * scales[:, None] - k[64:]).abs()
    bound = torch.maximum(k[64:].abs() * 2**-4, scales[:, None] * 2**-10)
    assert bool((err <= bound).all())
    full = torch.ones(64, dtype=torch.bool)
    full[70 - 64] = False
    assert bool((values.abs().amax(-1)[full] == 448).all())
    assert torch.equal(mod.dequantize(cache)[64:], (values.double() * scales.double()[:, None]))


def test_cache_bytes_match_sglangs_builder():
    """SGLang's test builder (dsa/utils.py) packs the same values and scales to the same bytes (its own
    tests round the scales up to powers of two; the V4 writer does not, so the scales here are ours)."""
    needs_sglang()
    utils = import_module("sglang.srt.layers.attention.dsa.utils")
    k = torch.randn(3 * 64, 128) * torch.pow(2.0, torch.randint(-3, 2, (3 * 64, 1)).float())
    scale = torch.clamp(k.abs().amax(-1), min=1e-4) / 448.0
    kv_fp8 = (k * (1.0 / scale)[:, None]).to(torch.float8_e4m3fn).view(3, 64, 128)
    theirs = utils.fp8_mqa_logits_make_fused_kv(kv_fp8, scale.view(3, 64), 64, 128)
    assert torch.equal(mod.fused_cache(k), theirs)


def test_oracle_agrees_with_sglangs_reference():
    """SGLang's fp32 reference (test/kernels/paged_mqa.py), on the unpacked cache, within fp32 rounding;
    both put -inf past each row's length."""
    needs_sglang()
    ref_fn = {"ref_fp8_paged_mqa_logits": import_module("sglang.test.kernels.paged_mqa").ref_fp8_paged_mqa_logits}
    case, t = _inputs("tiny_b3_mixed300")
    flat = t["kv_cache"].reshape(t["kv_cache"].shape[0], -1)
    kv_fp8 = flat[:, : 64 * 128].contiguous().view(torch.float8_e4m3fn).view(-1, 64, 128)
    kv_scales = flat[:, 64 * 128 :].contiguous().view(torch.float32)
    theirs = ref_fn["ref_fp8_paged_mqa_logits"](
        t["q_fp8"], kv_fp8, kv_scales, t["weights"], t["seq_lens"], t["page_table"], mod.max_seq_len(t), 64
    )
    ours = mod.oracle(t, case)["logits"]
    valid = mod.valid_region(t, case)["logits"]
    assert bool((theirs[~valid] == -math.inf).all()) and bool((ours[~valid] == -math.inf).all())
    assert torch.allclose(theirs[valid].double(), ours[valid], rtol=1e-5, atol=1e-5)


def test_metrics_see_the_tail_and_the_selection():
    case, t = _inputs("tiny_b3_mixed300")
    ref = mod.oracle(t, case)
    same = {m.name: m.value for m in mod.metrics(ref, ref, t, case)}
    assert same["tail_not_neginf"] == 0 and same["max_rel_err_magnitude"] == 0 and same["topk_recall"] == 1
    zero_tail = ref["logits"].clone()
    zero_tail[~mod.valid_region(t, case)["logits"]] = 0.0
    got = {m.name: m for m in mod.metrics({"logits": zero_tail}, ref, t, case)}
    assert got["tail_not_neginf"].value == got["tail_not_neginf"].detail["zero"] > 0
    # a row longer than 512 whose best token is pushed to the bottom loses it from its top-512
    lens = torch.tensor([600], dtype=torch.int32)
    exact = torch.randn(1, 600, dtype=torch.float64)
    worse = exact.clone()
    worse[0, exact[0].argmax()] = -100.0
    pooled, worst, row = mod.topk_recall(worse, exact, lens)
    assert pooled == worst == 511 / 512 and row == 0


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp("planted_indexer_logits")
    r, run = run_op(tmp, PROFILE, "planted_indexer_logits")
    m = run.measurements
    over = breaches(m, {"planted_indexer_logits": op.ceilings})
    m = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, metric): v for i, metric, v in zip(m["impl"], m["metric"], m["value"])}
    return r, over, values


@pytest.mark.parametrize("impl", ["sglang.torch_sm120", "sglang.torch"])
def test_clean_fallbacks_are_within_the_ceilings(measured, impl):
    _, over, v = measured
    assert v[(impl, "calc_diff")] < 1e-5
    assert 0 < v[(impl, "max_rel_err_magnitude")] < 2.0**-8
    assert v[(impl, "nonfinite_mismatch")] == 0
    assert impl not in set(over["impl"])


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_is_flagged(measured, fault):
    r, over, v = measured
    impl = f"planted.{fault}"
    assert impl in set(over["impl"]), f"{fault} passed every ceiling"
    flagged = set(over[over["impl"] == impl]["metric"])
    # the op's own metric sees every one of them, not only the global drift
    assert "max_rel_err_magnitude" in flagged
    assert v[(impl, "max_rel_err_magnitude")] > 5 * v[("sglang.torch_sm120", "max_rel_err_magnitude")]
    assert r.returncode == 1


def test_dropped_partial_page_leaves_valid_logits_at_minus_inf(measured):
    _, _, v = measured
    assert v[("planted.partial_page_dropped", "nonfinite_mismatch")] > 0


def test_tail_conventions_are_visible_not_gated(measured):
    """_torch_sm120 writes -inf past seq_len, _torch 0.0, and a kernel that ignores seq_lens writes real
    logits there: all shown by tail_not_neginf, none a breach (the top-k reads only t < seq_len)."""
    _, over, v = measured
    assert v[("sglang.torch_sm120", "tail_not_neginf")] == 0
    assert v[("sglang.torch", "tail_not_neginf")] > 0
    assert v[("planted.seq_lens_ignored", "tail_not_neginf")] > 0
    assert v[("planted.seq_lens_ignored", "calc_diff")] == v[("sglang.torch_sm120", "calc_diff")]
    assert "planted.seq_lens_ignored" not in set(over["impl"])

"""Faults of the classes the tiny cases of before could not see, each one edit of a copy of SGLang 0.5.23's own
kernel file, run through the CLI on the CPU: each is caught by the op's ceilings in the new case or path that
exists for its class, and is invisible in the ones that were there before (which is why that case or path is
needed).

  launch configuration   fp8 GEMM scales stepping early: only a tuned config with K tiles below the group
  guard band             fp8 GEMM row mask one row too far: only the sentinels around SGLang's output
  value range            MLA softmax maximum starting at 0: only rows whose scores are all very negative
  poisoned input         MLA reading the slots past a row's length, weighting them 0: only a poisoned tail
"""

import pytest

from tests.conftest import needs_sglang, run_planted

PROFILE_FP8 = """
name = "edited"
[kernels]
cases = ["tiny"]
[kernels.ops.planted_edit_fp8_block_gemm]
"""
PROFILE_MLA = PROFILE_FP8.replace("planted_edit_fp8_block_gemm", "planted_edit_mla")
BEFORE = ["tiny_m3_k256_n256", "tiny_m1_k512_n128", "tiny_m5_k384_n200", "tiny_m4_k320_n256"]


def _values(run):
    m = run.measurements
    m = m[((m["reference"] == "fp64") | m["reference"].isna()) & (m["status"] == "ok")]  # stray_writes: no reference
    return {(i, c.split("/")[-1], k): v for i, c, k, v in zip(m["impl"], m["case"], m["metric"], m["value"])}


def _over(over) -> set:
    return {(i, c.split("/")[-1]) for i, c in zip(over["impl"], over["case"])}


@pytest.fixture(scope="module")
def fp8(tmp_path_factory):
    needs_sglang()
    r, run, over = run_planted(tmp_path_factory.mktemp("edited_fp8"), PROFILE_FP8, "planted_edit_fp8_block_gemm")
    return r, _values(run), _over(over)


@pytest.fixture(scope="module")
def mla(tmp_path_factory):
    needs_sglang()
    r, run, over = run_planted(tmp_path_factory.mktemp("planted_edit_mla"), PROFILE_MLA, "planted_edit_mla")
    return r, _values(run), _over(over)


def test_the_unedited_kernel_passes_every_case_and_config(fp8, mla):
    for _, _, over in (fp8, mla):
        assert not {(i, c) for i, c in over if i.startswith("sglang.")}


def test_scales_stepping_early_shows_only_with_tiles_below_the_group(fp8):
    r, v, over = fp8
    for case in BEFORE + ["tiny_m65_k128_n96"]:
        # the default config: one K tile per group, the edit changes nothing
        assert ("edited.scale_step_early", case) not in over, case
        assert v[("edited.scale_step_early", case, "calc_diff")] == v[("sglang.triton", case, "calc_diff")]
        # a tuned config with 64-wide K tiles: every second tile takes the next group's scales
        assert ("edited.scale_step_early.subgroup_tiles", case) in over, case
        assert v[("edited.scale_step_early.subgroup_tiles", case, "calc_diff")] > 1e-3
    assert r.returncode == 1


def test_a_row_written_past_the_output_shows_only_in_the_guard_band(fp8):
    _, v, over = fp8
    for path in ("edited.row_mask_off_by_one", "edited.row_mask_off_by_one.subgroup_tiles"):
        for case in BEFORE + ["tiny_m65_k128_n96"]:
            # every value the output holds is right: drift cannot see it
            assert v[(path, case, "calc_diff")] == v[("sglang.triton", case, "calc_diff")]
            # the row past M is written: N sentinels changed (the tile's columns within N)
            assert v[(path, case, "stray_writes")] > 0, (path, case)
            assert (path, case) in over
    assert v[("sglang.triton", "tiny_m65_k128_n96", "stray_writes")] == 0


def test_a_softmax_maximum_starting_at_zero_shows_only_on_all_negative_scores(mla):
    r, v, over = mla
    edited = "edited.max_starts_at_zero"
    for case in ("tiny_b3_h4_swa64_c4x64", "tiny_b2_h4_topk64_nosink_nolen"):
        assert (edited, case) not in over, case
        assert v[(edited, case, "calc_diff")] < 1e-5
    negative = "tiny_b2_h4_scores_all_negative"
    assert (edited, negative) in over
    assert v[(edited, negative, "calc_diff")] > 0.5  # every weight underflowed: the output is zero
    assert v[("sglang.triton", negative, "calc_diff")] < 1e-5
    assert r.returncode == 1


def test_slots_past_the_length_read_and_weighted_zero_show_only_when_poisoned(mla):
    _, v, over = mla
    edited = "edited.tail_read_then_masked"
    for case in ("tiny_b3_h4_swa64_c4x64", "tiny_b2_h4_scores_all_negative"):
        # the slots past the length hold real rows: 0 x a finite value, the same output
        assert (edited, case) not in over, case
        assert v[(edited, case, "calc_diff")] == v[("sglang.triton", case, "calc_diff")]
    poisoned = "tiny_b3_h4_c4x64_tail_poisoned"
    assert (edited, poisoned) in over
    assert v[(edited, poisoned, "nonfinite_mismatch")] > 0
    assert v[("sglang.triton", poisoned, "nonfinite_mismatch")] == 0

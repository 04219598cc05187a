"""kernels/indexer_logits_fp4.py: its FP4 cache and queries have the layout SGLang's writers and readers
use, its oracle decodes e2m1 x ue8m0 as a hand computation does, and through the real CLI SGLang's torch and
Triton FP4 index logits pass while a swapped nibble order and a wrong scale block, planted in a copy of
SGLang's Triton kernel, are flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.workers.sglang_src import import_module
from tests.conftest import ROOT, needs_sglang, run_planted

OP = "planted_indexer_logits_fp4"
op = load_op_file(ROOT / "kernels" / "indexer_logits_fp4.py")
mod = op.module


def _inputs(name: str, seed: int = 0):
    case = op.cases()[name]
    return case, mod.make_inputs(case, torch.Generator().manual_seed(seed))


def test_cases_cover_the_flash_shapes():
    flash = [c for c in op.cases().values() if "flash" in c.tags]
    decode = [c for c in flash if c.params["mode"] == "decode"]
    assert {c.params["next_n"] for c in decode} == {1, 2, 3, 4}  # MTP, the next_n = 3 class included
    assert {c.params["ratio"] for c in flash} == {1, 2}
    assert {c.params["B"] for c in decode} >= {1, 8}
    assert any(c.params["mode"] == "prefill" for c in flash)
    assert max(max(mod.lengths(c)) for c in decode) == 65536  # a ratio-1 layer at 64K context
    for c in op.cases().values():
        if c.params["mode"] == "decode":
            assert min(mod.lengths(c)) >= 1


def test_inputs_have_the_production_layout():
    case, t = _inputs("tiny_b2_n3_r2_mixed520")
    R = 2 * 3
    assert t["q_fp4"].shape == (R, 32, 64) and t["q_fp4"].dtype == torch.int8
    assert t["q_sf"].shape == (R, 32) and t["q_sf"].dtype == torch.int32
    assert t["weights"].shape == (R, 32) and t["weights"].dtype == torch.float32
    assert t["k_cache"].shape[1:] == (64, 1, 68) and t["k_cache"].dtype == torch.uint8
    assert t["row_request"].tolist() == [0, 0, 0, 1, 1, 1]
    # MTP rows of one request see (pos + 1) // 2 positions: non-decreasing, one more at most per row
    lens = t["seq_lens"].view(2, 3)
    assert bool(((lens[:, 1:] - lens[:, :-1]) >= 0).all()) and bool(((lens[:, 1:] - lens[:, :-1]) <= 1).all())
    # ratio 2: a 256-token page is 128 index slots, two consecutive 64-slot index pages
    table = t["page_table"]
    used = table[table != 0].view(-1, 2)
    assert bool((used[:, 1] == used[:, 0] + 1).all()) and bool((used[:, 0] % 2 == 0).all())
    assert int(table[0, -1]) == 0 or int(table[1, -1]) == 0  # the shorter request is padded with page 0
    # the weights are the bf16 product of the raw weights and the scale, widened
    assert torch.equal(t["weights"], (t["head_weights_raw"].float() * mod.WEIGHT_SCALE).bfloat16().float())


def test_decoder_by_hand():
    """0x9A: low nibble 0xA (sign, index 2: -1.0) is element 0, high nibble 0x9 (sign, index 1: -0.5)
    element 1; 0x7F: low 0xF is -6.0, high 0x7 is 6.0. Block scales
    2^(e - 127) for the four bytes of the word, block j on elements 32j..32j+31."""
    payload = torch.zeros(1, 64, dtype=torch.uint8)
    payload[0, 0], payload[0, 16], payload[0, 63] = 0x9A, 0x7F, 0x23
    word = torch.tensor([128 | (125 << 8) | (127 << 16) | (130 << 24)], dtype=torch.int64).to(torch.int32)
    got = mod.decode_fp4(payload, word)[0]
    want = torch.zeros(128, dtype=torch.float64)
    want[0], want[1] = -1.0 * 2, -0.5 * 2  # block 0: 2^1
    want[32], want[33] = -6.0 * 2**-2, 6.0 * 2**-2  # byte 16 = elements 32, 33: block 1, 2^-2
    want[126], want[127] = 1.5 * 2**3, 1.0 * 2**3  # byte 63: block 3, 2^3; low 0x3 = 1.5, high 0x2 = 1.0
    assert torch.equal(got, want)


def test_oracle_one_logit_by_hand():
    """One logit summed element by element, in Python floats, from the decoded bytes."""
    case, t = _inputs("tiny_b2_n3_r2_mixed520")
    ref = mod.oracle(t, case)["logits"]
    r, j = 4, int(t["seq_lens"][4]) - 1  # request 1's second row, its last visible position
    b = int(t["row_request"][r])
    slot = int(t["page_table"][b, j // 64]) * 64 + j % 64
    page, off = divmod(slot, 64)
    flat = t["k_cache"].reshape(t["k_cache"].shape[0], -1)[page]
    kbytes = flat[off * 64 : off * 64 + 64].tolist()
    kexp = flat[64 * 64 + off * 4 : 64 * 64 + off * 4 + 4].tolist()
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

    def value(nibble: int, e: int) -> float:
        return (-1.0 if nibble & 8 else 1.0) * grid[nibble & 7] * 2.0 ** (e - 127)

    def row(bytes_: list[int], exps: list[int]) -> list[float]:
        out = []
        for i, byte in enumerate(bytes_):
            e = exps[(2 * i) // 32]
            out += [value(byte & 15, e), value(byte >> 4, e)]
        return out

    k = row(kbytes, kexp)
    total = 0.0
    for h in range(32):
        qb = t["q_fp4"][r, h].view(torch.uint8).tolist()
        word = int(t["q_sf"][r, h]) & 0xFFFFFFFF
        q = row(qb, [(word >> (8 * s)) & 0xFF for s in range(4)])
        total += max(0.0, sum(a * c for a, c in zip(q, k))) * float(t["weights"][r, h])
    assert math.isclose(total, float(ref[r, j]), rel_tol=1e-12, abs_tol=1e-15)
    assert ref[r, int(t["seq_lens"][r]) :].eq(-math.inf).all()


def test_cache_and_queries_are_what_sglangs_writers_and_readers_make():
    """The cache bytes: SGLang's torch fake quant (`fake_quant_fp4`) then its test packer and store
    (`quantize_fp4_indexer_ref`, `store_fp4_index_cache_ref`) give the bytes of the op's encoder; its
    pool reader (`get_index_k_dequant`) gives the oracle's K exactly (e2m1 x 2^e is exact in bf16); and
    the oracle's queries are SGLang's `_rope_fq4` (torch RoPE + fake quant) exactly."""
    needs_sglang()
    fq = import_module("sglang.kernels.ops.quantization.fp4_fake_quant")
    common = import_module("sglang.test.kernels.deepseek_v4.common")
    x = (torch.randn(128, 128, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    x[5] = 0.0  # a zero row: exponent floors
    x[7, :32] = 1e-30  # a block under the packer's floor
    payload, exp = mod.pack_fp4(x)
    theirs, sf = common.quantize_fp4_indexer_ref(fq.fake_quant_fp4(x))
    assert torch.equal(payload, theirs) and torch.equal(mod.pack_sf(exp), sf)
    cache = common.store_fp4_index_cache_ref(payload, sf, torch.arange(128), 2)
    ours = torch.cat([payload.reshape(2, -1), exp.reshape(2, -1)], 1)
    assert torch.equal(cache, ours)

    case, t = _inputs("tiny_prefill_r2")
    pool = import_module("sglang.srt.mem_cache.deepseek_v4_memory_pool").DeepSeekV4IndexerPool
    slots = torch.arange(t["k_cache"].shape[0] * 64)
    k = pool.get_index_k_dequant(mod._stand_in_pool(t), 0, slots)
    assert torch.equal(k.double(), mod.dequantize_cache(t["k_cache"]))
    assert torch.equal(mod._fq4_queries(t).double(), mod.decode_fp4(t["q_fp4"], t["q_sf"]))


def test_metrics_see_the_tail_and_the_selection():
    case, t = _inputs("tiny_prefill_r2")
    ref = mod.oracle(t, case)
    same = {m.name: m.value for m in mod.metrics(ref, ref, t, case)}
    assert same == {
        "max_rel_err_magnitude": 0.0,
        "tail_not_neginf": 0.0,
        "topk_recall": 1.0,
        "worst_row_topk_recall": 1.0,
    }
    zero_tail = ref["logits"].clone()
    zero_tail[~mod.valid_region(t, case)["logits"]] = 0.0
    got = {m.name: m for m in mod.metrics({"logits": zero_tail}, ref, t, case)}
    assert got["tail_not_neginf"].value == got["tail_not_neginf"].detail["other"] > 0
    assert int(t["seq_lens"].min()) == 0  # the prefill's first row at ratio 2 sees nothing: all tail


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(OP)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{OP}]\n', OP)
    m = run.measurements
    flagged = {(i, c.split("/")[1], k) for i, c, k in zip(over["impl"], over["case"], over["metric"])}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values


CASES = ("tiny_b2_n3_r2_mixed520", "tiny_prefill_r2")


@pytest.mark.parametrize("impl", ["sglang.torch", "sglang.triton_decode"])
def test_clean_paths_are_within_the_ceilings(measured, impl):
    _, flagged, values = measured
    for case in CASES:
        assert 1e-7 < values[(impl, case, "calc_diff")] < 1e-5, (impl, case)  # bf16 roundings, not zero
        assert 0 < values[(impl, case, "max_rel_err_magnitude")] < 2.0**-6
        assert values[(impl, case, "tail_not_neginf")] == 0
        assert not any(f[:2] == (impl, case) for f in flagged)


@pytest.mark.parametrize("fault", ["nibbles_swapped", "scale_block_in_elements"])
def test_planted_fault_is_flagged(measured, fault):
    r, flagged, values = measured
    impl = f"planted.{fault}"
    for case in CASES:
        assert values[(impl, case, "max_rel_err_magnitude")] > 0.1, (fault, case)  # O(1), not rounding
        assert (impl, case, "max_rel_err_magnitude") in flagged
        assert (impl, case, "calc_diff") in flagged
    assert r.returncode == 1

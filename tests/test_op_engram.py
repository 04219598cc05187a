"""Engram (kernels/engram_hash.py, kernels/engram_gate.py): each oracle against a second computation
(the hash ids element by element in Python's unbounded integers, the lookup through torch's own fp8 /
e8m0 decoding, the gate row by row in math), the layout and multiplier recipes against SGLang's own,
the tiny cases' boundaries present, and through the real CLI engine SGLang's paths exact (hash, rows)
or within the bf16 ceilings (gate) while planted one-line edits of the three Triton kernels are flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from harness.results.ceilings import CALC_DIFF
from tests.conftest import ROOT, needs_sglang, run_planted


@pytest.fixture(scope="module")
def eh():
    return load_op_file(ROOT / "kernels" / "engram_hash.py").module


@pytest.fixture(scope="module")
def eg():
    return load_op_file(ROOT / "kernels" / "engram_gate.py").module


def _inputs(mod, name, seed=3):
    case = next(c for c in mod.cases() if c.name == name)
    return case, mod.make_inputs(case, torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ hash


def _hash_by_hand(t, case, eh, tok_index: int) -> list[list[int]]:
    """One token's [layer][column] hash ids from the module docstring, in Python integers, walking its
    request's sequence (history row, then this forward's tokens) without the oracle's helpers."""
    lens, _ = eh._requests(case)
    starts = [sum(lens[:r]) for r in range(len(lens))]
    r = max(i for i, s in enumerate(starts) if s <= tok_index and lens[i] > 0)
    seq = t["history"][int(t["req_slots"][r])].tolist() + t["input_ids"][starts[r] : tok_index + 1].tolist()
    pos = int(t["positions"][tok_index])
    image = case.params["vocab"] - 1 if case.params["image"] else None
    comp, hit = [], False
    for s in range(eh.N):
        v = seq[-1 - s]
        if image is not None and v >= eh.MM_PAD_SHIFT_VALUE:
            v = image
        hit = hit or pos < s or v == image
        comp.append(eh.pad_id(t) if hit else int(t["token_map"][v]))
    out = []
    for layer in range(len(eh.LAYER_IDS)):
        mult = [int(m) for m in t["multipliers"][layer]]
        primes = [p for per in eh.layout_primes(case.params["bucket"])[layer] for p in per]
        bounds = eh.column_bounds(case.params["bucket"], layer)
        row = []
        for n in range(2, eh.N + 1):
            h = 0
            for s in range(n):
                h ^= comp[s] * mult[s]
            assert 0 <= h < 2**63  # the int64 bound SGLang's multipliers are chosen for
            for j in range(eh.H):
                c = (n - 2) * eh.H + j
                row.append(h % primes[c] + bounds[c])
        out.append(row)
    return out


@pytest.mark.parametrize("name", ["tiny_extend_4req_pad3", "tiny_extend_image", "tiny_verify_b3x4"])
def test_hash_oracle_is_the_definition_by_hand(eh, name):
    case, t = _inputs(eh, name)
    ids = eh.oracle(t, case)["hash_ids"]
    real = sum(eh._requests(case)[0])
    for tok in range(real):
        assert ids[tok].tolist() == _hash_by_hand(t, case, eh, tok), tok
    # padding tokens: every shift blocked, so every comp is pad_id
    all_pad = eh.hash_f(torch.zeros(1, eh.N, dtype=torch.long), torch.ones(1, eh.N, dtype=torch.bool), t, eh.pad_id(t))
    for tok in range(real, ids.shape[0]):
        assert torch.equal(ids[tok], all_pad[0])


def test_hash_tiny_cases_sit_on_the_boundaries(eh):
    seen_first = seen_last = False
    for case in (c for c in eh.cases() if "tiny" in c.tags):
        t = eh.make_inputs(case, torch.Generator().manual_seed(0))
        out = eh.oracle(t, case)
        rows = eh.column_bounds(case.params["bucket"], 0)[-1]
        seen_first |= bool((out["hash_ids"][:, 0] == 0).any())
        seen_last |= bool((out["hash_ids"][:, 0] == rows - 1).any())
        _, blocked = eh._windows(t, case)
        real = sum(eh._requests(case)[0])
        assert bool(blocked[:real, 1:].any()) and not bool(blocked[:real, 0].all()), case.name  # starts
    assert seen_first and seen_last
    names = {c.name: c for c in eh.cases()}
    lens, pads = eh._requests(names["tiny_decode_b31_pad2"])
    assert sum(lens) + pads == eh.BLOCK_T + 1  # one past the 32-token block
    assert 0 in names["tiny_extend_4req_pad3"].params["lens"]  # adjacent starts


def test_layout_and_multipliers_are_sglangs(eh):
    """The inputs' primes, offsets and multipliers are what EngramLayout / EngramHasher build from a config
    (the flash bucket base and compressed vocabulary included), and MM_PAD_SHIFT_VALUE is SGLang's."""
    needs_sglang()
    from types import SimpleNamespace

    eng = pytest.importorskip("sglang.srt.layers.engram")
    from sglang.srt.managers.schedule_batch import MM_PAD_SHIFT_VALUE

    assert MM_PAD_SHIFT_VALUE == eh.MM_PAD_SHIFT_VALUE
    for sizes in (eh.TINY, eh.FLASH):
        cfg = SimpleNamespace(
            engram_layer_ids=list(eh.LAYER_IDS), engram_max_ngram_size=eh.N, engram_n_heads=eh.H,
            engram_vocab_size=sizes["bucket"], engram_num_embeddings=[0, 0], engram_head_dim=256,
        )  # fmt: skip
        layout = eng.EngramLayout.from_config(cfg)
        assert layout.primes == eh.layout_primes(sizes["bucket"])
        for i in range(len(eh.LAYER_IDS)):
            assert layout.column_bounds(i) == eh.column_bounds(sizes["bucket"], i)
        want = eng.compute_hash_multipliers(eh.LAYER_IDS, eh.N, sizes["compressed"])
        assert torch.equal(want, eh.multipliers(sizes["compressed"]))
    # the published V4.1-Flash table sizes are these layouts' sums
    assert eh.column_bounds(eh.FLASH["bucket"], 0)[-1] == 384006168
    assert eh.column_bounds(eh.FLASH["bucket"], 1)[-1] == 384016682


# ------------------------------------------------------------------------------------------------ gate


@pytest.mark.parametrize("name", ["tiny_t2_tp4_rank1_image", "tiny_t3_host_sorted"])
def test_rows_oracle_is_torchs_decoding(eg, name):
    """torch's own float8_e4m3fn / float8_e8m0fnu conversions give the same rows; ids outside the shard
    are zero, and the edges the docstring names are read."""
    case, t = _inputs(eg, name)
    rows = eg.rows_f64(t, case)
    lo, hi = eg.shard(case)
    ids = t["ids"]
    scale = t["table_s"].float().repeat_interleave(eg.FP8_BLOCK, -1)
    table = t["table_w"].float() * scale
    owned = (ids >= lo) & (ids < hi)
    want = torch.where(owned[..., None], table[ids.clamp(0, table.shape[0] - 1)].double(), 0.0)
    assert torch.equal(rows, want)
    assert torch.equal(rows.to(torch.bfloat16).double(), rows)  # every value representable in bf16
    b = eg._hash.column_bounds(case.params["bucket"], 0)
    assert int(ids[0, 0]) == 0 and int(ids[0, -1]) == b[-1] - 1
    if case.params["table"] == "device":
        assert {lo - 1, lo, hi - 1, hi} <= set(ids[0].tolist())
        assert not bool(owned[0, ids[0].tolist().index(hi)]) and bool(owned[0, ids[0].tolist().index(lo)])
    last = int(ids[0, -1])
    if lo <= last < hi:  # the scale-byte-0 row decodes to 2^-127 times payloads >= 2
        assert int(t["table_s"][last].view(torch.uint8).max()) == 0
        assert float(rows[0, -1].abs().min()) >= 2.0 * 2.0**-127


def test_gate_oracle_is_the_definition_row_by_row(eg):
    """The gate of every (token, stream) in Python floats, and the image rows keep x."""
    case, t = _inputs(eg, "tiny_t2_tp4_rank1_image")
    y = eg.oracle(t, case)["y"]
    x, kv = t["x"].double(), t["kv"].double()
    qw, kw = t["q_weight"].double(), t["k_weight"].double()
    D = case.params["D"]
    image = eg.image_token_id(case)
    for tok in range(x.shape[0]):
        for m in range(eg.HC):
            xs, key = x[tok, m].tolist(), kv[tok, m * D : (m + 1) * D].tolist()
            w = (qw[m] * kw[m]).tolist()
            r = 1 / math.sqrt(sum(v * v for v in xs) / D + eg.EPS) / math.sqrt(sum(v * v for v in key) / D + eg.EPS)
            dot = sum(a * b * c for a, b, c in zip(xs, w, key)) * r / math.sqrt(D)
            g = 1 / (1 + math.exp(-math.copysign(math.sqrt(max(abs(dot), eg.CLAMP)), dot)))
            want = torch.tensor(xs, dtype=torch.float64)
            if int(t["input_ids"][tok]) != image:
                want = want + g * kv[tok, eg.HC * D :]
            assert torch.allclose(y[tok, m], want, rtol=1e-12, atol=1e-12), (tok, m)
    assert bool((t["input_ids"] == image).any()) and bool((t["input_ids"] != image).any())


def test_gate_zero_row_takes_the_clamp(eg):
    """The padding row: x = 0, so dot = 0 and the gate is sigmoid(sqrt(clamp)) exactly."""
    case, t = _inputs(eg, "tiny_t3_tp1")
    y = eg.oracle(t, case)["y"]
    g = 1 / (1 + math.exp(-math.sqrt(eg.CLAMP)))
    D = case.params["D"]
    assert torch.allclose(y[-1], (g * t["kv"][-1, eg.HC * D :].double()).expand(eg.HC, D), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------ planted runs


def _measure(tmp_path_factory, op):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(op)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{op}]\n', op)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values


@pytest.fixture(scope="module")
def hash_run(tmp_path_factory):
    return _measure(tmp_path_factory, "planted_engram_hash")


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    return _measure(tmp_path_factory, "planted_engram_gate")


@pytest.mark.parametrize("impl", ["sglang.triton", "sglang.torch"])
def test_clean_hash_paths_are_exact(hash_run, impl):
    _, flagged, values = hash_run
    for case in ("tiny_decode_b6", "tiny_extend_4req_pad3"):
        assert values[(impl, case, "hash_ids_mismatch")] == 0, (impl, case)
        assert (impl, case) not in flagged


def test_start_mask_off_by_one_is_flagged(hash_run):
    r, flagged, values = hash_run
    for case in ("tiny_decode_b6", "tiny_extend_4req_pad3"):
        assert values[("planted.start_mask_off_by_one", case, "hash_ids_mismatch")] > 0
        assert ("planted.start_mask_off_by_one", case) in flagged
    assert r.returncode == 1


@pytest.mark.parametrize("impl", ["sglang.triton", "sglang.torch"])
def test_clean_gate_paths_are_within_the_bf16_ceilings(gate_run, impl):
    _, flagged, values = gate_run
    for case in ("tiny_t2_tp4_rank1_image", "tiny_t4_d96"):
        assert values[(impl, case, "rows_mismatch")] == 0
        assert 1e-7 < values[(impl, case, "calc_diff")] < 1e-5, (impl, case)  # one bf16 rounding, not zero
        assert (impl, case) not in flagged


def test_shard_upper_edge_is_flagged(gate_run):
    """Only where a case reads the row just past the shard: rank 1 of 4 does, the TP1 D = 96 case not."""
    _, flagged, values = gate_run
    assert values[("planted.shard_upper_edge", "tiny_t2_tp4_rank1_image", "rows_mismatch")] > 0
    assert ("planted.shard_upper_edge", "tiny_t2_tp4_rank1_image") in flagged
    assert values[("planted.shard_upper_edge", "tiny_t4_d96", "rows_mismatch")] == 0


def test_mean_over_block_is_flagged(gate_run):
    r, flagged, values = gate_run
    for case in ("tiny_t2_tp4_rank1_image", "tiny_t4_d96"):
        assert values[("planted.mean_over_block", case, "calc_diff")] > CALC_DIFF["bf16"]
        assert ("planted.mean_over_block", case) in flagged
    assert r.returncode == 1

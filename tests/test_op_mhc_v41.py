"""The DeepSeek-V4.1 mHC ops (kernels/mhc_v41_mix.py, mhc_v41_combine_norm.py, mhc_v41_post.py): each oracle
checked against a second computation (element by element, or a property the definition implies), the MXFP8
definition against the swizzle formula SGLang documents and e4m3's grid, and through the real CLI engine the
clean SGLang paths within their ceilings while planted one-line edits of SGLang's kernels are flagged."""

import math

import pytest
import torch

from harness.parity.catalogue import load_op_file
from tests.conftest import ROOT, needs_sglang, run_planted


def _op(name: str):
    return load_op_file(ROOT / "kernels" / f"{name}.py").module


@pytest.fixture(scope="module")
def mix():
    return _op("mhc_v41_mix")


@pytest.fixture(scope="module")
def combine_norm():
    return _op("mhc_v41_combine_norm")


@pytest.fixture(scope="module")
def post():
    return _op("mhc_v41_post")


def _inputs(module, name: str):
    case = next(c for c in module.cases() if c.name == name)
    return case, module.make_inputs(case, torch.Generator().manual_seed(5))


# ---------------------------------------------------------------------------------------------- oracles


def test_mix_oracle_by_hand(mix):
    """One row's 24 mixes summed term by term (math.fsum), then its pre and post from the sigmoid; the comb a
    near doubly stochastic matrix after 20 Sinkhorn sweeps, every entry positive."""
    case, t = _inputs(mix, "tiny_t8_h96")
    out = mix.oracle(t, case)
    x = t["x"][2].flatten().double().tolist()
    fn, scale, base = t["hc_fn"].double(), t["hc_scale"].double(), t["hc_base"].double()
    r = 1.0 / math.sqrt(math.fsum(v * v for v in x) / len(x) + 1e-6)
    mixes = [math.fsum(a * b for a, b in zip(x, fn[m].tolist())) * r for m in range(24)]
    for j in range(4):
        pre = 1 / (1 + math.exp(-(mixes[j] * float(scale[0]) + float(base[j])))) + 1e-6
        post = 2 / (1 + math.exp(-(mixes[4 + j] * float(scale[1]) + float(base[4 + j]))))
        assert out["pre"][2, j].item() == pytest.approx(pre, rel=1e-12)
        assert out["post"][2, j].item() == pytest.approx(post, rel=1e-12)
    # Sinkhorn by hand: row softmax + eps, a column sweep, then 19 (row, column) sweeps, each over (sum + eps)
    c = [[mixes[8 + 4 * j + k] * float(scale[2]) + float(base[8 + 4 * j + k]) for k in range(4)] for j in range(4)]
    c = [[math.exp(v - max(row)) / math.fsum(math.exp(u - max(row)) for u in row) + 1e-6 for v in row] for row in c]

    def columns(c):
        sums = [math.fsum(c[j][k] for j in range(4)) + 1e-6 for k in range(4)]
        return [[c[j][k] / sums[k] for k in range(4)] for j in range(4)]

    c = columns(c)
    for _ in range(19):
        c = columns([[v / (math.fsum(row) + 1e-6) for v in row] for row in c])
    assert torch.allclose(out["comb"][2], torch.tensor(c, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    assert bool((out["comb"] > 0).all())
    # the padding row: mixes 0, so the triplet is the bias alone
    assert torch.allclose(out["pre"][-1], torch.sigmoid(base[:4]) + 1e-6, rtol=1e-14)


def test_combine_norm_oracle_by_hand(combine_norm):
    case, t = _inputs(combine_norm, "tiny_t8_edge")
    y = combine_norm.oracle(t, case)["y"]
    x, pre, w = t["x_flat"].double().view(8, 4, -1), t["pre"].double(), t["weight"].double()
    row = 3
    s = [math.fsum(float(pre[row, k]) * float(x[row, k, h]) for k in range(4)) for h in range(5120)]
    inv = 1.0 / math.sqrt(math.fsum(v * v for v in s) / 5120 + 1e-6)
    want = torch.tensor([v * inv for v in s], dtype=torch.float64) * w
    assert torch.allclose(y[row], want, rtol=1e-12, atol=1e-15)
    assert float(y[-1].abs().max()) == 0.0  # the padding row is 0, never NaN


def test_mxfp8_definition_against_the_documented_swizzle_and_e4m3(combine_norm):
    """Scales: a group of amax 448 takes 2^0, one of 449 takes 2^1, a zero group the byte 0; every scale byte
    sits where mxfp8_epilogue.py's docstring formula puts it; dequantized values are within half an e4m3 step."""
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(130, 5120, generator=gen).to(torch.bfloat16)
    y[0, :32] = 0
    y[0, 32:64] = 1
    y[0, 33] = 448
    y[0, 64:96] = 1
    y[0, 65] = 449  # bf16 rounds it to 448: the same byte
    y[0, 96:128] = 1
    y[0, 97] = 450  # bf16: 450 -> one step past 448
    q, sf, swizzled = combine_norm.mxfp8_f64(y)
    assert sf[0, :4].tolist() == [0, 127, 127, 128]
    assert q[0, :32].float().abs().max() == 0
    G = 160
    for r in (0, 1, 31, 32, 127, 128, 129):
        for g in (0, 3, 4, 159):
            off = (r // 128) * ((G + 3) // 4) * 512 + (g // 4) * 512 + ((r % 32) * 4 + ((r // 32) % 4)) * 4 + (g % 4)
            assert int(swizzled[off]) == int(sf[r, g]), (r, g)
    assert swizzled.numel() == G * 256 and int(swizzled.view(2, -1)[1].sum()) == int(sf[128:].sum())
    scale = torch.pow(2.0, sf.double() - 127).repeat_interleave(32, 1)
    deq, exact = q.double() * scale, y.double()
    step = torch.pow(2.0, torch.floor(torch.log2((exact / scale).abs().clamp(min=2**-6))) - 3) * scale
    assert bool(((deq - exact).abs() <= step / 2 + 1e-30).all())


def test_post_oracle_by_hand_and_its_stream_sum(post):
    """R' element by element, and the property sum_j R'[j] = (sum_j post_j) x + sum_k (sum_j comb[k, j]) R[k]."""
    case, t = _inputs(post, "tiny_t8_h1100")
    out = post.oracle(t, case)["residual"]
    x, r, p, c = (t[k].double() for k in ("x", "residual", "post", "comb"))
    for tok, j, h in ((0, 0, 0), (3, 2, 1099), (5, 3, 517)):
        want = math.fsum([float(p[tok, j] * x[tok, h])] + [float(c[tok, k, j] * r[tok, k, h]) for k in range(4)])
        assert out[tok, j, h].item() == pytest.approx(want, rel=1e-13, abs=1e-300)
    lhs = out.sum(1)
    rhs = p.sum(1, keepdim=True) * x + torch.einsum("tk,tkh->th", c.sum(-1), r)
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert float(out[-1].abs().max()) == 0.0


def test_mxfp8_interpreter_cast_is_what_the_op_file_says(combine_norm):
    """Triton's interpreter's e4m3 cast (what the CPU runs) rounds a tie away from zero and halves a value
    whose round-up carries into an odd exponent; on values it represents exactly it is the identity."""
    v = torch.tensor([116.0, -127.0, 136.0, 1.5, -448.0], dtype=torch.float32)
    got = combine_norm._interpreter_e4m3(v).float().tolist()
    assert got == [120.0, -64.0, 144.0, 1.5, -448.0]
    assert v.to(torch.float8_e4m3fn).float().tolist() == [112.0, -128.0, 128.0, 1.5, -448.0]


# ---------------------------------------------------------------------------------------------- the CLI


def _measured(tmp_path_factory, op: str):
    needs_sglang()
    tmp = tmp_path_factory.mktemp(op)
    r, run, over = run_planted(tmp, f'name = "planted"\n[kernels]\ncases = ["tiny"]\n[kernels.ops.{op}]\n', op)
    m = run.measurements
    flagged = {(i, c.split("/")[1]) for i, c in zip(over["impl"], over["case"])}
    ok = m[(m["reference"] == "fp64") & (m["status"] == "ok")]
    values = {(i, c.split("/")[1], k): v for i, c, k, v in zip(ok["impl"], ok["case"], ok["metric"], ok["value"])}
    return r, flagged, values


@pytest.fixture(scope="module")
def measured_mix(tmp_path_factory):
    return _measured(tmp_path_factory, "planted_mhc_v41_mix")


@pytest.fixture(scope="module")
def measured_combine_norm(tmp_path_factory):
    return _measured(tmp_path_factory, "planted_mhc_v41_combine_norm")


@pytest.fixture(scope="module")
def measured_post(tmp_path_factory):
    return _measured(tmp_path_factory, "planted_mhc_v41_post")


MIX_CASES = ("tiny_t8_h96", "tiny_t9_h96_sharp", "tiny_t3_h640")


def test_mix_clean_path_is_within_the_fp32_ceilings(measured_mix):
    _, flagged, values = measured_mix
    for case in MIX_CASES:
        assert 0 < values[("sglang.triton", case, "calc_diff")] < 1e-12, case  # fp32 rounding, not zero
        assert values[("sglang.triton", case, "pre.bias")] < 4e-8
        assert ("sglang.triton", case) not in flagged


def test_mix_dropped_pre_eps_is_flagged_by_the_bias(measured_mix):
    """The comb is untouched (calc_diff as clean), pre's calc_diff barely moves; the mean signed error is -eps."""
    r, flagged, values = measured_mix
    for case in MIX_CASES:
        assert values[("planted.pre_eps_dropped", case, "pre.bias")] == pytest.approx(1e-6, rel=0.05)
        assert values[("planted.pre_eps_dropped", case, "pre.calc_diff")] < 1e-9
        assert ("planted.pre_eps_dropped", case) in flagged
    assert r.returncode == 1


CN_CASES = ("tiny_t8_edge", "tiny_t9", "tiny_t49", "tiny_t3_mxfp8_edge")


def test_combine_norm_clean_paths_are_within_the_ceilings(measured_combine_norm):
    _, flagged, values = measured_combine_norm
    for case in CN_CASES:
        assert 1e-7 < values[("sglang.triton", case, "calc_diff")] < 1e-5, case  # two bf16 roundings
        assert ("sglang.triton", case) not in flagged
    mx = ("sglang.triton_mxfp8", "tiny_t3_mxfp8_edge")
    assert values[(*mx, "y_q.mismatch")] == 0 and values[(*mx, "y_sf.mismatch")] == 0
    assert mx not in flagged


def test_an_uneven_column_split_is_flagged_only_where_it_is_taken(measured_combine_norm):
    """3 programs a row leave 2 columns unwritten (NaN in the poisoned buffer), only for 9..48 rows."""
    _, flagged, values = measured_combine_norm
    assert values[("planted.split_three_ways", "tiny_t9", "nonfinite_mismatch")] == 9 * 2
    assert ("planted.split_three_ways", "tiny_t9") in flagged
    for case in ("tiny_t8_edge", "tiny_t49", "tiny_t3_mxfp8_edge"):
        assert ("planted.split_three_ways", case) not in flagged


def test_quantizing_the_fp32_row_is_flagged_by_the_exact_bytes(measured_combine_norm):
    r, flagged, values = measured_combine_norm
    key = ("planted.quantized_from_fp32", "tiny_t3_mxfp8_edge")
    assert values[(*key, "y_q.mismatch")] > 0
    # a group's fp32 amax can pass a power of two where its bf16 one does not: a few scales move too
    assert values[(*key, "y_sf.mismatch")] < values[(*key, "y_q.mismatch")]
    assert values[(*key, "calc_diff")] == values[("sglang.triton_mxfp8", "tiny_t3_mxfp8_edge", "calc_diff")]
    assert key in flagged
    assert r.returncode == 1


POST_CASES = ("tiny_t8_h1100", "tiny_t9_h1100", "tiny_t9")


def test_post_clean_paths_are_within_the_bf16_ceilings(measured_post):
    _, flagged, values = measured_post
    for case in POST_CASES:
        assert 1e-7 < values[("sglang.split_h", case, "calc_diff")] < 1e-5, case
        assert ("sglang.split_h", case) not in flagged
    assert values[("sglang.model", "tiny_t9", "calc_diff")] == values[("sglang.split_h", "tiny_t9", "calc_diff")]
    assert ("sglang.model", "tiny_t9") not in flagged


def test_a_transposed_comb_is_flagged(measured_post):
    r, flagged, values = measured_post
    for case in POST_CASES:
        assert values[("planted.comb_transposed", case, "calc_diff")] > 1e-3
        assert ("planted.comb_transposed", case) in flagged
    assert r.returncode == 1

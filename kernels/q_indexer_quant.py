"""DeepSeek-V4 C4 indexer query: RoPE on the last 64 dims, a 128-point Hadamard rotation, FP8 (e4m3)
quantization per (token, head) row, the row's scale folded into the head weights.

Call site: `srt/layers/attention/dsv4/indexer.py:C4Indexer.compute_q` (both `_forward_prepare_*` of
the indexer backend): `q = wq_b(q_lora).view(-1, 64, 128)`, then (FP4 indexer off, the V4 default)
`fused_q_indexer_rope_hadamard_quant(q, weight, self.weight_scale, self.freqs_cis, positions)`
(`kernels/ops/attention/dsv4/norm_rope.py`; JIT CUDA `FusedQIndexerRopeHadamardQuantKernel<bf16>` in
`jit/csrc/deepseek_v4/main_norm_rope.cuh`, one warp per (token, head), kRopeFirst false, kHadamard
true). `weight` is `compute_weights(x, skip_scale=True)`, the raw weights_proj output.

Inputs, in the production layout:
  q          [T, 64, 128] bf16, contiguous (index_n_heads 64, index_head_dim 128; the indexer is
             replicated, n_local_heads = n_heads, so TP does not change the shapes)
  weight     [T, 64] bf16, weights_proj(x)
  freqs      [rows, 64] fp32 (cos, sin) interleaved: the C4 layer's YaRN table (kernels/q_norm_rope.py)
  positions  [T] int64 or int32
  weight_scale = index_head_dim^-0.5 * index_n_heads^-0.5 (C4Indexer.weight_scale), a constant
Outputs, as the indexer logits read them (kernels/indexer_logits.py: q_fp8 [B, 1, 64, 128] and
weights [B, 64] fp32 with the q scale folded in):
  q_fp8        [T, 64, 128] float8_e4m3fn
  weights_out  [T, 64, 1] fp32

Definition (from the CUDA source):
  r     = q with its last 64 dims rotated: interleaved pairs times freqs_cis[pos] (fp32 in the kernel)
  y     = H r, H the 128 x 128 Sylvester-ordered Walsh-Hadamard matrix over sqrt(128) (orthonormal,
          H[i, j] = (-1)^popcount(i & j) / sqrt(128); the kernel's butterflies: 2 in-lane, 5 across lanes)
  scale = max(amax(|y|), 1e-4) / 448      (a float, not a power of two)
  q_fp8 = e4m3(y / scale)  (round to nearest; |y / scale| <= 448)
  weights_out = weight * weight_scale * scale
The primary output `q` is the dequantized row, q_fp8 * scale, the scale read back as weights_out /
(weight * weight_scale) in float64 (weights are drawn away from 0 so that it can be), against the fp64
y. `weights_out` is checked against weight * weight_scale * scale_exact; `scale_rel_err` is the scale
convention checked on its own: the largest relative error of the recovered scale against
max(amax_exact, 1e-4) / 448 (fp32 rounding leaves ~1e-7; a wrong floor or a wrong 448 moves it by
percent, even where the dequantized rows stay right).

SGLang implementations that run here:
  - `sglang.cuda`: the JIT CUDA kernel (needs_cuda; the SM120 audit builds and launches it)
  - `sglang.triton_pieces`: no SGLang reference computes the whole op on a CPU (ROCm calls
    `torch.ops.sgl_kernel`, the Ascend backend's torch Hadamard imports torch_npu, the DSA
    `rotate_activation` is JIT CUDA). This path chains SGLang's CPU-runnable pieces of it at the fused
    kernel's fp32 precision: `rope.py:apply_rotary_emb_triton` (fused_rope_inplace's ROCm body, with
    the flat-row kernel ROCm's DeepseekV4 selects) on an fp32 copy of the tail, the Hadamard as an fp32
    matmul (this file's, not SGLang's), and SGLang's Triton `act_quant_triton.py:_act_quant_kernel`
    (128-wide groups, no scale_fmt: the same max(amax, 1e-4) / 448 convention). Under Triton's
    interpreter the kernel's fp32 -> fp8 store is wrong for ~3% of values (the interpreter loses the
    carry into the exponent: 124.3 -> 64, see kernels/mxfp4_moe.py), so there the kernel writes
    y / scale to an fp32 buffer and torch rounds it to e4m3; on a GPU `act_quant` runs as written.
"""

from __future__ import annotations

import torch

from harness.parity.op import ORACLE, Case, Metric, Path, case_maker, import_module, interpreted, load_by_path, sibling

OP = "q_indexer_quant"
# e4m3 rounding (3 mantissa bits) of every value: calc_diff ~3.5e-4 against the fp64 rotation, fp8's
DTYPE = "fp8"
PRIMARY = "q"
OUTPUTS = {"weights_out": "float32"}  # q_fp8 is read back as `q` (float64) by the paths
TOLERANCE = (1e-2, 6.25e-2)  # half an e4m3 step is 2^-4 of the value (1e-2 absolute for the smallest)
# fp32 rotation, amax, two products: ~1e-7 relative; 2^-16 leaves room, a convention error is >= 1e-2
CEILINGS = {"scale_rel_err": 2.0**-16}

_rope = sibling(__file__, "q_norm_rope")
_logits = sibling(__file__, "indexer_logits")
HEADS, DIM, FP8_MAX = _logits.HEADS, _logits.DIM, _logits.FP8_MAX  # 64, 128, 448
ROPE_DIM = _rope.ROPE_DIM
AMAX_FLOOR = 1e-4  # fmaxf(1e-4f, abs_max) in the kernel
WEIGHT_SCALE = DIM**-0.5 * HEADS**-0.5  # C4Indexer.weight_scale = softmax_scale * n_heads^-0.5
ACT_QUANT_PY = "kernels/ops/quantization/act_quant_triton.py"


def hadamard(n: int = DIM) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix, float64: H[i, j] = (-1)^popcount(i & j) / sqrt(n)."""
    i = torch.arange(n)
    bits = (i[:, None] & i[None, :]).bitwise_and(0xFF)  # n <= 256: one byte of popcount
    pop = sum((bits >> k) & 1 for k in range(8))
    return (1.0 - 2.0 * (pop % 2)).double() / n**0.5


# ---------------------------------------------------------------------------------------------- cases


_case = case_maker(table="compressed", pos_dtype="int64", layout="decode", edge=False)


def cases() -> list[Case]:
    out = [
        _case("tiny_t2", {"tiny"}, T=2, rows=4096),
        # a padded (all-zero) token, a token far under the 1e-4 floor, a large one, and a row whose
        # energy sits in one value; the last table row and int32 positions
        _case("tiny_t5_edge", {"tiny"}, T=5, rows=8192, edge=True, pos_dtype="int32"),
    ]
    for t in (1, 8, 64, 128):
        out.append(_case(f"b{t}", {"flash"}, T=t, rows=131072))
    for t in (1024, 8192):
        out.append(_case(f"t{t}", {"flash"}, T=t, rows=131072, layout="prefill"))
    out.append(_case("b64_pos1m", {"flash"}, T=64, rows=_rope.MAX_POS))
    out.append(_case("t2048_edge_int32", {"flash"}, T=2048, rows=131072, edge=True, pos_dtype="int32"))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """q ~ N(0, 1) scaled per token by 2^U(-2, 2); weights N(0, 1) kept at |w| >= 1/8 (the scale is read
    back through them). With `edge`: token 1 zero, token 2 at 1e-6 (amax under the 1e-4 floor), token 3
    at 1000, token 4 a one-hot per head before the rope (after the rotation all 128 values equal
    in magnitude: the quantization's easiest and its tie-heavy case)."""
    p = case.params
    T = p["T"]
    scale = torch.pow(2.0, torch.rand(T, 1, 1, generator=gen) * 4 - 2)
    q = torch.randn(T, HEADS, DIM, generator=gen) * scale
    if p["edge"]:
        q[1 % T] = 0.0
        q[2 % T] *= 1e-6 / scale[2 % T]
        q[3 % T] *= 1000.0 / scale[3 % T]
        q[4 % T] = 0.0
        q[4 % T, :, 7] = 3.0  # a nope dim: the rope leaves it alone
    w = torch.randn(T, HEADS, generator=gen)
    w = torch.where(w.abs() < 0.125, 0.125 * w.sign().where(w != 0, torch.ones_like(w)), w)
    return {
        "q": q.to(torch.bfloat16).contiguous(),
        "weight": w.to(torch.bfloat16).contiguous(),
        "freqs": _rope.rope_table(p["table"], p["rows"]),
        "positions": _rope.make_positions(case, gen),
    }


def cost(case: Case) -> tuple[float, float]:
    """Per (token, head): 128 bf16 read, 128 fp8 and one fp32 written, its weight read; a 256 B table
    row per token. Rope 6 flops per pair, Hadamard 7 x 128 adds, the scale and quantization ~3 per value."""
    T = case.params["T"]
    pos_bytes = 4 if case.params["pos_dtype"] == "int32" else 8
    rows = T * HEADS
    return float(rows * (DIM * 2 + DIM + 4 + 2) + T * (ROPE_DIM * 4 + pos_bytes)), float(
        rows * (3 * ROPE_DIM + 7 * DIM + 3 * DIM)
    )


# ---------------------------------------------------------------------------------------------- oracle


def rotated(t: dict) -> torch.Tensor:
    """y = H rope(q), float64 [T, 64, 128]."""
    r = _rope.rotate(t["q"].double(), t["freqs"], t["positions"])
    return r @ hadamard().to(r.device)  # H is symmetric


def exact_scale(y: torch.Tensor) -> torch.Tensor:
    return y.abs().amax(-1).clamp(min=AMAX_FLOOR) / FP8_MAX


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    y = rotated(t)
    w = t["weight"].double() * WEIGHT_SCALE
    return {"q": y, "weights_out": (w * exact_scale(y)).unsqueeze(-1)}


def _outputs(t: dict, q_fp8: torch.Tensor, weights_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a path gives back: the dequantized rows (scale recovered from weights_out) and weights_out."""
    scale = weights_out.double().squeeze(-1) / (t["weight"].double() * WEIGHT_SCALE)
    return {"q": q_fp8.double() * scale.unsqueeze(-1), "weights_out": weights_out}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`scale_rel_err`: the largest relative error of a row's recovered scale against max(amax, 1e-4) /
    448 of the exact rotation (the scale convention on its own), with the row."""
    w = inputs["weight"].to("cpu").double() * WEIGHT_SCALE
    got = outputs["weights_out"].to("cpu").double().squeeze(-1) / w
    want = oracle_out["weights_out"].to("cpu").double().squeeze(-1) / w
    err = ((got - want).abs() / want).nan_to_num(nan=float("inf"))
    at = divmod(int(err.argmax()), err.shape[1])
    return [
        Metric(
            "scale_rel_err", float(err.max()), detail={"row": list(at), "got": float(got[at]), "want": float(want[at])}
        )
    ]


# ---------------------------------------------------------------------------------------------- paths


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    q_fp8, weights_out = _cuda_call(t, case)()
    return _outputs(t, q_fp8, weights_out)


def _cuda_call(t: dict, case: Case):
    mod = import_module("sglang.kernels.ops.attention.dsv4.norm_rope")
    fc = _rope.freqs_cis(t["freqs"])
    return lambda: mod.fused_q_indexer_rope_hadamard_quant(t["q"], t["weight"], WEIGHT_SCALE, fc, t["positions"])


def act_quant(x: torch.Tensor, module=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's Triton act_quant (group 128, no scale_fmt) of x [M, 128] fp32; under the interpreter
    its kernel stores y / scale as fp32 and torch rounds to e4m3 (see the module docstring)."""
    aq = module or load_by_path(ACT_QUANT_PY)
    if not interpreted():
        return aq.act_quant(x, DIM, None)
    M = x.shape[0]
    y = torch.empty_like(x)
    s = x.new_empty(M, 1)
    aq._act_quant_kernel[(triton_cdiv(M, 32), 1)](
        x, y, s, M, DIM, group_size=DIM, round_scale=False, BLOCK_M=32, BLOCK_N=DIM
    )
    return y.to(torch.float8_e4m3fn), s


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def sglang_triton_pieces(t: dict, case: Case, rope_module=None, quant_module=None) -> dict[str, torch.Tensor]:
    rope = rope_module or load_by_path(_rope.ROPE_PY)
    T = t["q"].shape[0]
    x = t["q"].float()  # the fused kernel's precision: no bf16 rounding between the steps
    before = rope._USE_BATCHED_ROPE
    rope.set_batched_rope(True)  # what ROCm's DeepseekV4 turns on: the flat-row kernel
    try:
        rope.apply_rotary_emb_triton(x[..., -ROPE_DIM:], _rope.freqs_cis(t["freqs"]), positions=t["positions"])
    finally:
        rope.set_batched_rope(before)
    y = (x.view(T * HEADS, DIM) @ hadamard().float().to(x.device)).contiguous()
    q_fp8, s = act_quant(y, quant_module)
    weights_out = t["weight"].float() * WEIGHT_SCALE * s.view(T, HEADS)
    return _outputs(t, q_fp8.view(T, HEADS, DIM), weights_out.unsqueeze(-1))


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64: rope, orthonormal Hadamard, max(amax, 1e-4) / 448"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        timed=_cuda_call,
        note="norm_rope.py fused_q_indexer_rope_hadamard_quant (main_norm_rope.cuh), the V4 C4 indexer's q",
    ),
    Path(
        "sglang.triton_pieces",
        sglang_triton_pieces,
        note="rope.py apply_rotary_emb_triton (fp32) + fp32 Hadamard matmul + act_quant_triton.py _act_quant_kernel",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.attention.dsv4.norm_rope:fused_q_indexer_rope_hadamard_quant": "",
}

UNJUDGED = {
    "weights_out.max_abs": "weights_out is the input weight times a constant times the q scale: scale_rel_err "
    "judges the scale, and the weight is an input",
}

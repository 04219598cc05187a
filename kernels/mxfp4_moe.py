"""DeepSeek-V4-Flash routed experts with MXFP4 weights: the grouped SwiGLU MLP of a MoE layer.

Call site: `models/deepseek_v2.py:DeepseekV2MoE` -> `FusedMoE` (`srt/layers/moe/fused_moe_triton/layer.py`)
with the FP4-expert `Fp8Config` (`srt/layers/quantization/fp8.py`). On SM120 in SGLang 0.5.23 the
DeepSeek-V4 override (`arg_groups/model_overrides/deepseek_v4.py`) turns `--moe-runner-backend auto` into
`flashinfer_mxfp4`: `Mxfp4FlashinferCutlassMoEMethod` (`quantization/mxfp4_flashinfer_cutlass_moe.py`) ->
`moe_runner/flashinfer_cutlass.py:_fused_experts_flashinfer_mxfp4_cutlass` -> FlashInfer `cutlass_fused_moe`
with MXFP8 activations (`mxfp8_quantize`, E8M0 per 32) and the MXFP4 weights. `SGLANG_DSV4_FP4_DEQUANT=1`
instead converts the experts to 128x128 block FP8 at load (`fp8.py:cast_e2m1fn_to_e4m3fn`) and runs SGLang's
Triton fused MoE (`moe_runner/triton_utils/fused_moe.py`), activations FP8 per 128 with float32 scales.

The math (DeepSeek-V4, `swiglu_limit` = 10, `routed_scaling_factor` = 1.5):
    for each token t and each of its top-6 experts e with weight w (renormalised sqrtsoftplus scores):
        up = x_t W3_e^T, gate = x_t W1_e^T          (W1 = gate_proj "w1", W3 = up_proj "w3" in the checkpoint)
        gate = min(gate, 10); up = clamp(up, -10, 10)   (FlashInfer SwiGLUBias with alpha 1, beta 0; SGLang's
                                                      silu_and_mul_clamp / act_and_mul_kernel: the same rule)
        out_t += w * (silu(gate) * up) W2_e^T
    out = 1.5 * out
Where the 1.5 is applied differs per backend, and each path here applies it where SGLang does:
`Mxfp4FlashinferCutlassMoEMethod.fuse_routed_scaling_factor_in_topk` is True, so TopK multiplies the fp32
top-k weights by 1.5 before the kernel (`topk.py`, `apply_routed_scaling_factor_on_output`); the Triton
runner (FP4-dequant path) passes it as `MoeRunnerConfig.routed_scaling_factor` to its final sum
(`moe_sum_reduce`, in fp32); the DeepGEMM runner multiplies its gathered bf16 output.

Inputs, in the production layout (one TP rank: at TP=2 the intermediate dimension I is 1024 and `out` is
that rank's partial sum, before the all-reduce):
  hidden_states          [T, 4096] bf16
  topk_ids               [T, 6] int32 expert ids (top-6 of 256; a few experts are hot)
  topk_weights           [T, 6] fp32, the renormalised sqrtsoftplus scores, WITHOUT routed_scaling_factor
  w13_weight             [E, 2I, H/2] int8: two e2m1 codes per byte, even k in the low nibble.
                         Rows [0, I) are up_proj (w3) and rows [I, 2I) gate_proj (w1): the order SGLang's
                         loader produces for FlashInfer CUTLASS (`load_up_proj_weight_first=True`), i.e.
                         what the SM120 default consumes. Paths that load [gate; up] (Fp8MoEMethod: the
                         DeepGEMM and FP4-dequant backends) swap the halves as their loader would.
  w2_weight              [E, H, I/2] int8, same packing
  w13_weight_scale_inv   [E, 2I, H/32] uint8: E8M0 bytes (the bits of float8_e8m0fnu: 2^(b-127)), rows as w13
  w2_weight_scale_inv    [E, H, I/32] uint8

Outputs: `out` [T, H] (bf16 from the kernels; fp64 from the oracle), the routed experts' sum with the
routed scaling applied. The oracle also returns `clamped` [T] fp64: the fraction of the token's SwiGLU
inputs that the limit changed, which `metrics()` uses to judge the rows where the clamp matters.

Paths (SGLang's are named sglang.*; goldens are other libraries called directly):
  sglang.flashinfer_mxfp4     the SM120 default, SGLang's Mxfp4FlashinferCutlassMoEMethod end to end
                              (post-load block_scale_interleave, MoeRunner, mxfp8_quantize, cutlass_fused_moe);
                              on SM90 the same method takes its W4A16 branch (mixed-GEMM interleave, bf16 x)
  sglang.fp4_dequant_triton   SGLANG_DSV4_FP4_DEQUANT=1: SGLang's cast_e2m1fn_to_e4m3fn, then its Triton MoE.
                              On a GPU, SGLang's `fused_experts`; on the CPU, its Triton kernels under the
                              interpreter (the one path that runs there; see `_triton_interpreted`)
  flashinfer.sm90_w4a16       golden, SM90: FlashInfer's bf16 x MXFP4 with interleaved weights, its test recipe
  deepgemm.fp8_fp4            golden, SM100/SM120: DeepGEMM m_grouped_fp8_fp4_gemm_nt_contiguous, the kernel of
                              `--moe-runner-backend deep_gemm` (SGLang's own glue for it, ep_scatter and the
                              JIT activation kernels, is not exercised here)
  fp64                        the oracle
No SGLang path of 0.5.23 runs a torch reference of this MoE: `fused_moe_native` and `moe_forward_native`
ignore swiglu_limit, and `MXFP4QuantizeUtil` only dequantizes. The PR-era `mxfp4_moe_sm120_triton.py` is
gone from the wheel.

The oracle is exact for the weights (our own e2m1 table and E8M0 decode, fp64 GEMMs) and takes the bf16
activations as they are: it does NOT model any path's activation quantization. Every path is measured
against the model's function, so its drift includes its own activation rounding: MXFP8 (E8M0 per 32) for
FlashInfer on SM120, FP8 per 128 (UE8M0) for DeepGEMM, FP8 per 128 (fp32 scales) for the Triton
FP4-dequant path, none (bf16) for FlashInfer's SM90 W4A16 golden. That rounding, twice (x and the SwiGLU
output), is about 4% per element, a calc_diff near 1e-3: DTYPE "fp4" (one FP4 operand, ceiling 1e-2) is
DeepGEMM's own bound for FP8 x FP4. The FP4-dequant conversion itself is exact while a 128x128 block's E8M0
exponents span at most 14 steps (the inputs span 2, as a checkpoint's do).
"""

from __future__ import annotations

import functools
import math

import torch

from harness.parity.op import (
    ORACLE,
    SM90,
    SM100,
    SM120,
    Case,
    Metric,
    Path,
    calc_diff,
    capturing,
    case_maker,
    deepgemm,
    dsv4,
    import_module,
    load_by_path,
    require,
)

OP = "mxfp4_moe"
DTYPE = "fp4"
PRIMARY = "out"
OUTPUTS = {"out": "bfloat16"}
# |out| is about 0.5 for an ordinary token (atol: a tenth of that) and tens for a loud one, where FP8
# activations cost about 4% of the row: its elements near zero fall outside, so this is a diagnostic, no ceiling
TOLERANCE = (5e-2, 1e-1)
# metrics() adds these two; see there
CEILINGS = {"clamped_rows_calc_diff": 1e-2, "gain_error": 5e-2}

SWIGLU_LIMIT = 10.0
ROUTED_SCALING_FACTOR = 1.5
MX_BLOCK = 32  # E8M0 scale per 32 e2m1 values
FP8_BLOCK = 128  # SGLang's FP8 activation group and the FP4-dequant weight block
E4M3_MAX = 448.0

# OCP MX e2m1: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; code 0b0xxx is positive
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


_case = case_maker(E=256, topk=6, H=4096, I=2048, tp=1, hot=8, loud=16)


def cases() -> list[Case]:
    """`loud`: one token in that many has activations 8x larger, so its SwiGLU inputs cross the limit
    (as DeepSeek-V4's outlier tokens do, the reason for swiglu_limit); `hot` experts draw several times
    their share of the tokens."""
    tiny = dict(E=8, topk=2, H=256, I=128, hot=1)
    out = [
        _case("tiny_t16", {"tiny"}, T=16, loud=4, **tiny),
        _case("tiny_t1_loud", {"tiny"}, T=1, loud=1, **tiny),
        _case("tiny_t40_hot", {"tiny"}, T=40, loud=8, **{**tiny, "hot": 2}),
    ]
    # one case's inputs are a whole layer's experts (3.2 GiB at TP=1, 1.6 at TP=2): the token sweep runs
    # at TP=2, the reference SM120 deployment (two RTX PRO 6000), and TP=1 at one size
    for t in (1, 8, 64, 512, 4096):
        out.append(_case(f"t{t}_tp2", {"flash"}, T=t, I=1024, tp=2))
    out.append(_case("t64_tp1", {"flash"}, T=64, I=2048, tp=1))
    # TP4/TP8 (nightly and the tp4-tp8 profile): I = 512 / 256 per rank, what four or eight RTX PRO 6000 run
    for tp, i in ((4, 512), (8, 256)):
        for t in (1, 8, 64, 512, 4096):
            out.append(_case(f"t{t}_tp{tp}", {"flash", f"tp{tp}"}, T=t, I=i, tp=tp))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _random_bytes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform random int8 of `shape`, drawn 8 bytes at a time (3 GiB of weights in seconds, not minutes):
    every e2m1 code is equally likely, so every entry of a decode table is exercised."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None, generator=gen)
    return words.view(torch.int8)[:n].view(shape)


def _scales(shape: tuple[int, ...], k: int, gen: torch.Generator) -> torch.Tensor:
    """E8M0 bytes around the exponent that gives the GEMM outputs unit variance (uniform e2m1 codes have
    an rms of 2.93), one step either way per 32-block, as a real checkpoint's scales vary."""
    base = 127 - round(math.log2(math.sqrt(k) * 2.93))
    return (base - 1 + torch.randint(0, 3, shape, dtype=torch.int16, generator=gen)).to(torch.uint8)


def _routing(T: int, E: int, topk: int, hot: int, gen: torch.Generator):
    """DeepSeek-V4 routing: sqrtsoftplus scores, top-k chosen on the scores plus a correction bias (here
    positive for the `hot` experts, so they draw several times their share), weights = the chosen scores
    renormalised."""
    scores = torch.nn.functional.softplus(torch.randn(T, E, generator=gen)).sqrt()
    bias = torch.zeros(E)
    bias[torch.randperm(E, generator=gen)[:hot]] = 0.3  # a hot expert draws about 7x the mean load
    ids = torch.topk(scores + bias, topk, dim=-1).indices
    weights = scores.gather(1, ids)
    return ids.to(torch.int32), (weights / weights.sum(-1, keepdim=True)).float()


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    p = case.params
    T, E, H, inter = p["T"], p["E"], p["H"], p["I"]
    gain = torch.ones(T, 1)
    gain[torch.randperm(T, generator=gen)[: T // p["loud"]]] = 8.0
    ids, weights = _routing(T, E, p["topk"], p["hot"], gen)
    return {
        "hidden_states": (torch.randn(T, H, generator=gen) * gain).to(torch.bfloat16),
        "topk_ids": ids,
        "topk_weights": weights,
        "w13_weight": _random_bytes((E, 2 * inter, H // 2), gen),
        "w2_weight": _random_bytes((E, H, inter // 2), gen),
        "w13_weight_scale_inv": _scales((E, 2 * inter, H // MX_BLOCK), H, gen),
        "w2_weight_scale_inv": _scales((E, H, inter // MX_BLOCK), inter, gen),
    }


def cost(case: Case) -> tuple[float, float]:
    """Bytes: the packed weights and scales of the experts the batch touches (expected count under uniform
    routing: E(1 - (1 - k/E)^T)), x in and out in bf16, the routing. Flops: two GEMMs per (token, expert)."""
    p = case.params
    T, E, k, H, inter = p["T"], p["E"], p["topk"], p["H"], p["I"]
    experts = E * (1.0 - (1.0 - k / E) ** T)
    per_expert = 3 * inter * H // 2 + 3 * inter * H // MX_BLOCK
    nbytes = experts * per_expert + 2 * T * H * 2 + T * k * 8
    return float(nbytes), 2.0 * T * k * 3 * inter * H


# ---------------------------------------------------------------------------------------------- oracle


def decode_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] int8 -> [..., K] float64, element 2j from the low nibble of byte j."""
    table = torch.tensor(E2M1, dtype=torch.float64, device=packed.device)
    u = packed.view(torch.uint8).long()
    return torch.stack([table[u & 0xF], table[u >> 4]], -1).flatten(-2)


def decode_e8m0(scale: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> 2^(b - 127) in float64 (255 would be NaN; the inputs never hold it)."""
    return dsv4.pow2(scale.view(torch.uint8).long() - 127)  # exact on every device


def dequantize(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return decode_e2m1(w) * decode_e8m0(s).repeat_interleave(MX_BLOCK, -1)


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 over the exactly dequantized weights, one expert at a time (256 fp64 experts would not fit)."""
    x = t["hidden_states"].double()
    T, inter = x.shape[0], case.params["I"]
    ids, weights = t["topk_ids"].long(), t["topk_weights"].double()
    out = torch.zeros_like(x)
    clamped = torch.zeros(T, dtype=torch.float64, device=x.device)
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        w13 = dequantize(t["w13_weight"][e], t["w13_weight_scale_inv"][e])
        h = x[tok] @ w13.T
        up, gate = h[:, :inter], h[:, inter:]
        up_c, gate_c = up.clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT), gate.clamp(max=SWIGLU_LIMIT)
        changed = ((up_c != up) | (gate_c != gate)).double().sum(-1)
        w2 = dequantize(t["w2_weight"][e], t["w2_weight_scale_inv"][e])
        y = (torch.nn.functional.silu(gate_c) * up_c) @ w2.T
        out.index_add_(0, tok, y * weights[tok, slot, None])
        clamped.index_add_(0, tok, changed / (inter * ids.shape[1]))
    return {"out": out * ROUTED_SCALING_FACTOR, "clamped": clamped}


def metrics(outputs: dict, oracle: dict, inputs: dict, case: Case) -> list[Metric]:
    """`clamped_rows_calc_diff`: calc_diff over the tokens whose SwiGLU inputs the limit changed, where an
    ignored or misplaced clamp shows (a loud token is one row in many). `gain_error`: |g - 1| for the
    least-squares gain g = <out, ref> / <ref, ref>, which a scale (routed scaling applied twice or never, an
    E8M0 bias off by one) moves while cosine stays 1."""
    out, ref = outputs["out"].double().cpu(), oracle["out"].double().cpu()
    rows = oracle["clamped"].cpu() > 0
    found = []
    if bool(rows.any()):
        found.append(
            Metric(
                "clamped_rows_calc_diff",
                calc_diff(out[rows], ref[rows]),
                detail={"rows": int(rows.sum()), "mean_clamped": float(oracle["clamped"][rows].mean())},
            )
        )
    if bool(out.isfinite().all()):
        gain = float((out * ref).sum() / (ref * ref).sum().clamp(min=1e-300))
        found.append(Metric("gain_error", abs(gain - 1.0), detail={"gain": gain}))
    else:
        found.append(Metric("gain_error", math.inf))
    return found


# ---------------------------------------------------------------------------------------------- helpers


def gate_up_first(w: torch.Tensor) -> torch.Tensor:
    """[up; gate] rows -> [gate; up] (what SGLang's loader builds when load_up_proj_weight_first is False)."""
    up, gate = w.chunk(2, dim=1)
    return torch.cat([gate, up], dim=1).contiguous()


class _OneRankGroup:
    """Stands for the TP group handle: the kernels only ask whether symmetric memory spans several ranks."""

    world_size = 1
    rank_in_group = 0


@functools.cache
def sglang_runtime() -> None:
    """SGLang reads its configuration through `srt/runtime_context.py`: publish a default one, as its own
    kernel tests do (`sglang.test.test_utils.published_topology`), with a one-rank TP group handle."""
    rc = import_module("sglang.srt.runtime_context")
    server_args = import_module("sglang.srt.server_args")
    rc.reset_context()
    rc.publish(server_args.ServerArgs(model_path="dummy"), role="test", ranks=rc.SpawnRanks(world_rank=0, dp_rank=None))
    rc.get_parallel().override_permanently(tp_group=_OneRankGroup())


def _runner_config(case: Case, layer=None, *, swiglu_limit: float | None, routed_scaling_factor: float):
    base = import_module("sglang.srt.layers.moe.moe_runner.base")
    p = case.params
    return base.MoeRunnerConfig(
        num_experts=p["E"],
        num_local_experts=p["E"],
        hidden_size=p["H"],
        intermediate_size_per_partition=p["I"],
        top_k=p["topk"],
        params_dtype=torch.bfloat16,
        activation="silu",
        is_gated=True,
        inplace=False,
        routed_scaling_factor=routed_scaling_factor,
        swiglu_limit=swiglu_limit,
        layer=layer,
    )


def _require_flashinfer():
    flashinfer = require("flashinfer")
    require("flashinfer.fused_moe")
    return flashinfer


# ------------------------------------------------------------------------------------------ SGLang: FlashInfer


class _Fp8MethodAfterLoad:
    """The `Fp8MoEMethod` the MXFP4 wrapper borrows: after loading, FP4 experts outside DeepGEMM and the
    MegaMoE backends only get an int8 view, which the inputs already are."""

    def process_weights_after_loading(self, layer) -> None:
        pass


def _flashinfer_layer(t: dict, case: Case):
    """A FusedMoE layer as the MXFP4 method sees it after loading, the scales as native E8M0."""
    p = case.params
    layer = torch.nn.Module()
    param = lambda v: torch.nn.Parameter(v.contiguous(), requires_grad=False)  # noqa: E731
    layer.w13_weight = param(t["w13_weight"])
    layer.w2_weight = param(t["w2_weight"])
    layer.w13_weight_scale_inv = param(t["w13_weight_scale_inv"].clone().view(torch.float8_e8m0fnu))
    layer.w2_weight_scale_inv = param(t["w2_weight_scale_inv"].clone().view(torch.float8_e8m0fnu))
    layer.num_local_experts = p["E"]
    layer.moe_tp_size, layer.moe_tp_rank = p["tp"], 0
    layer.moe_ep_size, layer.moe_ep_rank = 1, 0
    return layer


def _flashinfer_call(t: dict, case: Case):
    """SGLang's own method end to end: its post-load processing (`block_scale_interleave` of the scales on
    SM120; the SM90 W4A16 interleave on Hopper), its runner, and its fused func with `mxfp8_quantize` and
    `cutlass_fused_moe`. Returns the call that runs one forward (what is timed)."""
    _require_flashinfer()
    sglang_runtime()
    mod = import_module("sglang.srt.layers.quantization.mxfp4_flashinfer_cutlass_moe")
    topk = import_module("sglang.srt.layers.moe.topk")
    standard = import_module("sglang.srt.layers.moe.token_dispatcher.standard")
    method = mod.Mxfp4FlashinferCutlassMoEMethod(_Fp8MethodAfterLoad(), prefix="model.layers.3.mlp.experts")
    layer = _flashinfer_layer(t, case)
    method.process_weights_after_loading(layer)
    config = _runner_config(case, layer, swiglu_limit=SWIGLU_LIMIT, routed_scaling_factor=ROUTED_SCALING_FACTOR)
    method.create_moe_runner(layer, config)
    # TopK folds the factor into the fp32 weights when the method asks for it (apply_routed_scaling_
    # factor_on_output); otherwise the caller scales the output (maybe_fuse_routed_scale_and_shared_add)
    fused = bool(getattr(mod.Mxfp4FlashinferCutlassMoEMethod, "fuse_routed_scaling_factor_in_topk", False))
    weights = t["topk_weights"] * ROUTED_SCALING_FACTOR if fused else t["topk_weights"]
    dispatch = standard.StandardDispatchOutput(
        hidden_states=t["hidden_states"],
        hidden_states_scale=None,
        topk_output=topk.StandardTopKOutput(weights.float(), t["topk_ids"], None),
        hidden_states_pre_quant=None,
    )

    def forward() -> torch.Tensor:
        out = method.apply(layer, dispatch).hidden_states
        return out if fused else out * ROUTED_SCALING_FACTOR

    return forward


def sglang_flashinfer_mxfp4(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"out": _flashinfer_call(t, case)()}


# ------------------------------------------------------------------------------ SGLang: FP4 dequant + Triton


def fp4_to_block_fp8(w: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLANG_DSV4_FP4_DEQUANT's load step, with SGLang's own converter, expert by expert as
    `Fp8MoEMethod.process_weights_after_loading` runs it. `s` is E8M0 bytes; the FP4 loader keeps float32."""
    cast = import_module("sglang.srt.layers.quantization.fp8").cast_e2m1fn_to_e4m3fn
    scale = decode_e8m0(s).float()
    pairs = [cast(w[e], scale[e]) for e in range(w.shape[0])]
    return torch.stack([q for q, _ in pairs]), torch.stack([b for _, b in pairs]).float()


def _quantize_fp8_groups(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SGLang's per-token-group FP8 quantization (`_per_token_group_quant_8bit`: scale = max(amax, 1e-10)
    / 448, q = clamp(x * (1 / scale))), rounded by torch. Under the Triton interpreter this step cannot be
    SGLang's kernel: Triton 3.9's interpreter converts fp32 to fp8e4nv wrongly for some values (124.8 -> 64:
    the carry into the exponent is lost; ties do not go to even), about 3% of them."""
    g = x.float().reshape(x.shape[0], -1, FP8_BLOCK)
    scale = g.abs().amax(-1, keepdim=True).clamp(min=1e-10) / E4M3_MAX
    q = (g * (1.0 / scale)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.reshape(x.shape).contiguous(), scale.squeeze(-1).contiguous()


def _triton_interpreted(x, w13, s13, w2, s2, ids, weights, *, swiglu_limit, routed_scaling_factor):
    """The Triton runner's kernel sequence (`_fused_moe_kernel_sequence`, its expert-filter branch) on the
    CPU: SGLang's `fused_moe_kernel` for both GEMMs with its default config, `act_and_mul_kernel` for the
    clamp and SiLU, `moe_sum_reduce` for the routed scaling, SGLang's Triton `moe_align_block_size`
    reference for the routing. The interpreter cannot do bf16 arithmetic, so the intermediates are fp32
    where the GPU keeps bf16 (below the FP8 rounding that follows them), and the activations are quantized
    by torch (see `_quantize_fp8_groups`)."""
    import triton.language as tl

    kernels = import_module("sglang.kernels.ops.moe.fused_moe_triton_kernels")
    configs = import_module("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config")
    align = load_by_path("test/kernels/moe_align.py")
    T, E, N, topk = x.shape[0], w13.shape[0], w13.shape[1], ids.shape[1]
    sglang_runtime()
    config = dict(configs.get_default_config(T, E, N, x.shape[1], topk, "fp8_w8a8", False, [128, 128]))
    # the default's 64-row blocks are mostly padding for a handful of tokens per expert, and the interpreter
    # pays for every row: 16 gives the same numbers (one block per row range, same K loop) in half the time.
    # The SM120 audit keeps SGLang's own: no tuned file covers block-FP8 at these shapes, so it is what
    # fused_experts launches there
    if not capturing():
        config["BLOCK_SIZE_M"] = min(config["BLOCK_SIZE_M"], 16)
    bm = config["BLOCK_SIZE_M"]
    numel = ids.numel()
    padded = numel + E * (bm - 1)
    sorted_ids = torch.full((padded,), numel, dtype=torch.int32)
    expert_ids = torch.zeros((padded + bm - 1) // bm, dtype=torch.int32)
    post_padded = torch.zeros(1, dtype=torch.int32)
    align.moe_align_block_size_triton(ids, E, bm, sorted_ids, expert_ids, post_padded)

    common = dict(
        compute_type=tl.float32,
        use_fp8_w8a8=True,
        use_int8_w8a8=False,
        use_int8_w8a16=False,
        use_int4_w4a16=False,
        per_channel_quant=False,
        block_shape=[FP8_BLOCK, FP8_BLOCK],
        filter_expert=True,
    )
    routing = (weights, ids, sorted_ids, expert_ids, post_padded)

    def gemm(a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, c: torch.Tensor, weighted: bool, top_k: int) -> None:
        q, q_scale = _quantize_fp8_groups(a)
        kernels.invoke_fused_moe_kernel(q, w, None, c, q_scale, s, None, *routing, weighted, top_k, config, **common)

    gate_up = torch.empty(numel, N, dtype=torch.float32)
    gemm(x, w13, s13, gate_up, False, topk)
    act = torch.empty(numel, N // 2, dtype=torch.float32)
    kernels.act_and_mul_triton(gate_up, act, config, ids, expert_ids, False, "silu", swiglu_limit=swiglu_limit)
    down = torch.empty(T, topk, w2.shape[1], dtype=torch.float32)
    gemm(act, w2, s2, down, True, 1)
    out = torch.empty(T, w2.shape[1], dtype=torch.float32)
    kernels.moe_sum_reduce_triton(down, out, routed_scaling_factor)
    return out.to(torch.bfloat16)


def sglang_fp4_dequant_triton(
    t: dict,
    case: Case,
    *,
    swiglu_limit: float | None = SWIGLU_LIMIT,
    routed_scaling_factor: float = ROUTED_SCALING_FACTOR,
) -> dict[str, torch.Tensor]:
    """SGLANG_DSV4_FP4_DEQUANT=1: the experts as SGLang converts them at load, then its Triton fused MoE
    (SGLang's `fused_experts` on a GPU; its kernels under the interpreter on the CPU). The keyword
    arguments exist for the planted faults (tests/ops/planted_mxfp4_moe.py)."""
    w13_fp8, s13, w2_fp8, s2 = _block_fp8_experts(t)
    x, ids, weights = t["hidden_states"], t["topk_ids"], t["topk_weights"].float()
    if x.device.type == "cpu":
        return {
            "out": _triton_interpreted(
                x, w13_fp8, s13, w2_fp8, s2, ids, weights, swiglu_limit=swiglu_limit,
                routed_scaling_factor=routed_scaling_factor,
            )
        }  # fmt: skip
    return {"out": _triton_gpu_call(t, case, w13_fp8, s13, w2_fp8, s2, swiglu_limit, routed_scaling_factor)()}


def _triton_gpu_call(t, case, w13_fp8, s13, w2_fp8, s2, swiglu_limit, routed_scaling_factor):
    fused = import_module("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe")
    topk = import_module("sglang.srt.layers.moe.topk")
    config = _runner_config(case, swiglu_limit=swiglu_limit, routed_scaling_factor=routed_scaling_factor)
    topk_output = topk.StandardTopKOutput(t["topk_weights"].float(), t["topk_ids"], None)
    sglang_runtime()

    def forward() -> torch.Tensor:
        return fused.fused_experts(
            t["hidden_states"],
            w13_fp8,
            w2_fp8,
            topk_output,
            config,
            use_fp8_w8a8=True,
            w1_scale=s13,
            w2_scale=s2,
            block_shape=[FP8_BLOCK, FP8_BLOCK],
        )

    return forward


def _block_fp8_experts(t: dict):
    """Both expert weights as the FP4-dequant load leaves them: W13 loaded as [gate; up], then block FP8."""
    w13_fp8, s13 = fp4_to_block_fp8(gate_up_first(t["w13_weight"]), gate_up_first(t["w13_weight_scale_inv"]))
    w2_fp8, s2 = fp4_to_block_fp8(t["w2_weight"], t["w2_weight_scale_inv"])
    return w13_fp8, s13, w2_fp8, s2


def _triton_timed(t: dict, case: Case):
    w13_fp8, s13, w2_fp8, s2 = _block_fp8_experts(t)
    return _triton_gpu_call(t, case, w13_fp8, s13, w2_fp8, s2, SWIGLU_LIMIT, ROUTED_SCALING_FACTOR)


# ---------------------------------------------------------------------------------------------- goldens


def _flashinfer_sm90_call(t: dict, case: Case):
    """FlashInfer's Hopper mixed-input MoE, bf16 activations x MXFP4 weights, as FlashInfer's own test
    (`tests/moe/test_trtllm_cutlass_fused_moe.py::test_moe_bf16_mxfp4`) drives it: weights and scales
    through `interleave_moe_{weights,scales}_for_sm90_mixed_gemm`, `use_w4_group_scaling=True`, the
    SwiGLU limit as explicit per-expert (alpha 1, beta 0, limit 10) tensors. FlashInfer reads W13 as
    [w3; w1] = [up; gate], the inputs' order. No activation quantization: the most exact kernel here."""
    flashinfer = _require_flashinfer()
    fused_moe = flashinfer.fused_moe
    E, dev = case.params["E"], t["hidden_states"].device
    w13 = fused_moe.interleave_moe_weights_for_sm90_mixed_gemm(t["w13_weight"].view(torch.uint8).contiguous(), "fp4")
    w2 = fused_moe.interleave_moe_weights_for_sm90_mixed_gemm(t["w2_weight"].view(torch.uint8).contiguous(), "fp4")
    s13 = fused_moe.interleave_moe_scales_for_sm90_mixed_gemm(t["w13_weight_scale_inv"], group_size=MX_BLOCK)
    s2 = fused_moe.interleave_moe_scales_for_sm90_mixed_gemm(t["w2_weight_scale_inv"], group_size=MX_BLOCK)
    ones = torch.ones(E, dtype=torch.float32, device=dev)
    out = torch.empty_like(t["hidden_states"])
    weights = (t["topk_weights"] * ROUTED_SCALING_FACTOR).float()

    def forward() -> torch.Tensor:
        fused_moe.cutlass_fused_moe(
            t["hidden_states"],
            t["topk_ids"].to(torch.int32),
            weights,
            w13,
            w2,
            torch.bfloat16,
            swiglu_alpha=ones,
            swiglu_beta=ones * 0.0,
            swiglu_limit=ones * SWIGLU_LIMIT,
            quant_scales=[s13.view(torch.int32), s2.view(torch.int32)],
            use_w4_group_scaling=True,
            output=out,
        )
        return out

    return forward


def flashinfer_sm90_w4a16(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"out": _flashinfer_sm90_call(t, case)().clone()}


def _ue8m0_fp8_groups(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 per 128 with the scale rounded up to a power of two (UE8M0), as SGLang quantizes DeepGEMM's
    activations on SM120 (`sglang_per_token_group_quant_fp8(..., scale_ue8m0=True)`)."""
    g = x.float().reshape(x.shape[0], -1, FP8_BLOCK)
    amax = g.abs().amax(-1, keepdim=True).clamp(min=1e-10)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    q = (g / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.reshape(x.shape).contiguous(), scale.squeeze(-1).contiguous()


def _deepgemm_call(t: dict, case: Case):
    """DeepGEMM's M-grouped contiguous FP8 x FP4 GEMM, the kernel behind `--moe-runner-backend deep_gemm`
    on SM120 (`moe_runner/deep_gemm.py` with `deep_gemm_sm120.py`'s contiguous scatter): each expert's rows
    padded to DeepGEMM's M alignment (padding rows -1 in the layout), recipe_a (1, 128) UE8M0 activations,
    recipe_b (1, 32) for the packed e2m1 weights with their E8M0 scales (given as float32 powers of two,
    which DeepGEMM packs to UE8M0 itself). The SwiGLU limit and the routed sum are done here in fp32."""
    dg = deepgemm.load()
    p = case.params
    x, ids, inter = t["hidden_states"], t["topk_ids"].long(), p["I"]
    dev = x.device
    align = dg.get_mk_alignment_for_contiguous_layout()
    align = align[0] if isinstance(align, tuple) else int(align)
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=p["E"]).tolist()
    rows, layout, start = torch.empty_like(order), [], 0
    for e, n in enumerate(counts):
        if n:
            padded = -(-n // align) * align
            rows[order[sum(counts[:e]) : sum(counts[:e]) + n]] = torch.arange(start, start + n, device=dev)
            layout.append((e, start, n, padded))
            start += padded
    m_indices = torch.full((start,), -1, dtype=torch.int32, device=dev)
    for e, s0, n, _ in layout:
        m_indices[s0 : s0 + n] = e
    gathered = torch.zeros(start, x.shape[1], dtype=x.dtype, device=dev)
    gathered[rows] = x[torch.arange(x.shape[0], device=dev).repeat_interleave(ids.shape[1])]
    s13 = decode_e8m0(t["w13_weight_scale_inv"]).float()
    s2 = decode_e8m0(t["w2_weight_scale_inv"]).float()
    weights = t["topk_weights"].flatten().float()

    def forward() -> torch.Tensor:
        gate_up = torch.empty(start, 2 * inter, dtype=torch.bfloat16, device=dev)
        dg.m_grouped_fp8_fp4_gemm_nt_contiguous(
            _ue8m0_fp8_groups(gathered), (t["w13_weight"], s13), gate_up, m_indices, recipe_a=(1, 128), recipe_b=(1, 32)
        )
        up, gate = gate_up.float().chunk(2, dim=-1)
        act = torch.nn.functional.silu(gate.clamp(max=SWIGLU_LIMIT)) * up.clamp(-SWIGLU_LIMIT, SWIGLU_LIMIT)
        down = torch.empty(start, p["H"], dtype=torch.bfloat16, device=dev)
        dg.m_grouped_fp8_fp4_gemm_nt_contiguous(
            _ue8m0_fp8_groups(act), (t["w2_weight"], s2), down, m_indices, recipe_a=(1, 128), recipe_b=(1, 32)
        )
        y = down[rows].float() * weights[:, None]
        return (y.view(x.shape[0], ids.shape[1], -1).sum(1) * ROUTED_SCALING_FACTOR).to(torch.bfloat16)

    return forward


def deepgemm_fp8_fp4(t: dict, case: Case) -> dict[str, torch.Tensor]:
    return {"out": _deepgemm_call(t, case)()}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="fp64 over the exact e2m1/E8M0 dequantization; bf16 activations as given"),
    Path(
        "flashinfer.sm90_w4a16",
        flashinfer_sm90_w4a16,
        golden=True,
        archs=SM90,
        timed=_flashinfer_sm90_call,
        note="FlashInfer cutlass_fused_moe, bf16 x MXFP4 with SM90-interleaved weights (FlashInfer's test recipe)",
    ),
    Path(
        "deepgemm.fp8_fp4",
        deepgemm_fp8_fp4,
        golden=True,
        needs_cuda=True,
        archs=(*SM100, *SM120),
        timed=_deepgemm_call,
        note="DeepGEMM m_grouped_fp8_fp4_gemm_nt_contiguous, FP8 (1,128) UE8M0 x FP4 (1,32); FP4 B needs SM100/SM120",
    ),
    Path(
        "sglang.flashinfer_mxfp4",
        sglang_flashinfer_mxfp4,
        archs=(*SM90, *SM120),
        timed=_flashinfer_call,
        note="the SM120 default: Mxfp4FlashinferCutlassMoEMethod, MXFP8 x MXFP4 on SM120 (W4A16 on SM90)",
    ),
    Path(
        "sglang.fp4_dequant_triton",
        sglang_fp4_dequant_triton,
        env={"SGLANG_DSV4_FP4_DEQUANT": "1"},
        timed=_triton_timed,
        note="SGLANG_DSV4_FP4_DEQUANT=1: cast_e2m1fn_to_e4m3fn at load, then the Triton fused MoE (FP8 per 128)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.srt.layers.quantization.mxfp4_flashinfer_cutlass_moe:Mxfp4FlashinferCutlassMoEMethod": (
        "I = 2048/1024/512/256 (TP1..TP8), V4-Flash's 256 experts; not V4.1's 384 experts at hidden 5120"
    ),
}

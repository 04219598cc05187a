"""DeepSeek-V4 hash routing: the first `num_hash_layers = 3` MoE layers pick their 6 experts from a fixed
token-id -> expert table rather than from the router scores, and only weight them by the scores.

Call site: `srt/layers/moe/hash_topk.py:HashTopK.forward`. With `SGLANG_OPT_USE_FUSED_HASH_TOPK` (default
True, SM120 included) it calls `kernels/ops/moe/dsv4.py:hash_topk(router_logits, input_ids, tid2eid,
num_fused_shared_experts, routed_scaling_factor, scoring_func)`, a JIT CUDA kernel
(`csrc/deepseek_v4/hash_topk.cuh`, one warp per token); with it off, `HashTopK._forward_torch`. The
Triton `hash_topk_triton` (`kernels/ops/moe/triton_hash_topk.py`) is the same op for ROCm.

Inputs, in the production layout:
  router_logits  [T, 256] fp32, the gate's output (n_routed_experts 256, one row per token)
  input_ids      [T] int64 token ids (the CUDA kernel requires int64); they repeat within a batch
  tid2eid        [V, 6] int32, the checkpoint's table: 6 distinct experts per token id (V = 129280)
The shape does not depend on TP or EP: every rank routes every token over all 256 experts.

Outputs: `topk_weights` [T, 6 + S] fp32 and `topk_ids` [T, 6 + S] int32, S = num_fused_shared_experts
(0, or 1 when the shared expert is fused into the MoE). The definition, from the CUDA source:
  ids[t, :6]  = tid2eid[input_ids[t]];            ids[t, 6 + j] = 256 + j  (the fused shared slots)
  s_i         = sqrt(softplus(router_logits[t, ids[t, i]])),  softplus(x) = max(x, 0) + log1p(exp(-|x|))
  w[t, :6]    = s / (sum(s) + 1e-20)   (the epsilon keeps an all-underflowed row finite)
  w[t, 6 + j] = 1 / routed_scaling_factor   (1.5 for DeepSeek-V4: the MoE output is scaled by it later)

Where the implementations differ from that (and so what the tails cases show):
  - `_forward_torch` sets the shared slot's weight to sum(w[t, :6]) / routed_scaling_factor, which is
    1/rsf except on a row whose scores all underflow, where it is 0. It "draws" the shared slot's id
    with `torch.randint(low=256, high=256 + S)`: with S = 1 the range holds one value, so the id is
    deterministic (256) and is compared like every other id; only the global RNG state moves.
  - `hash_topk_triton` computes log(1 + exp(-|x|)) rather than log1p, so a logit below about -17 scores
    exactly 0 in fp32 and one in [-16, -8] loses up to 1e-3 of its score; it renormalises without the
    epsilon, so a row whose 6 hashed logits are all below about -17 gets NaN weights.
A row whose exact score sum is below 1e-30 (all 6 hashed logits below about -140) is one no fp32 path can
score: its routed weights are left out of the drift and checked by `underflow_rows_bad` (finite, within
1e-6 of the exact ~0); its shared weight is still compared.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from harness.parity.op import ORACLE, Case, Known, Metric, Path, case_maker, ids_mismatch, import_module, load_by_path

OP = "hash_topk"
DTYPE = "fp32"
PRIMARY = "topk_weights"
OUTPUTS = {"topk_weights": "float32", "topk_ids": "int32"}
TOLERANCE = (1e-6, 1e-5)
CEILINGS = {"ids_mismatch": 0.0, "underflow_rows_bad": 0.0}
EXPERTS, TOPK, RSF, SCORING = 256, 6, 1.5, "sqrtsoftplus"
VOCAB = 129280
EPS = 1e-20  # kRenormalizeSumEpsilon in hash_topk.cuh; _RENORMALIZE_SUM_EPSILON in moe/topk.py
UNDERFLOW_SUM = 1e-30  # exact routed score sum under which a row is one fp32 cannot score
# the kinds of tail row, and the range their 6 hashed logits are drawn from
TAILS = {"cancel": (-16.0, -8.0), "deep": (-30.0, -18.0), "underflow": (-400.0, -200.0), "huge": (20.0, 80.0)}


_case = case_maker(V=VOCAB, S=0, tails=False)


def cases() -> list[Case]:
    tiny = dict(V=1000)
    out = [
        _case("tiny_t1_s0", {"tiny"}, T=1, **tiny),
        _case("tiny_t64_s1", {"tiny"}, T=64, S=1, **tiny),
        # the extreme-logit rows where SGLang's Triton port gives NaN: a known finding (KNOWN), run
        # everywhere, allowlisted
        _case("tiny_t40_s0_tails", {"tiny", "tails"}, T=40, tails=True, **tiny),
        _case("tiny_t40_s1_tails", {"tiny", "tails"}, T=40, S=1, tails=True, **tiny),
    ]
    # decode batches and prefill chunks of DeepSeek-V4-Flash, with and without the fused shared expert
    for t in (1, 8, 64, 256, 2048, 8192):
        for s in (0, 1):
            out.append(_case(f"{'b' if t <= 256 else 't'}{t}_s{s}", {"flash"}, T=t, S=s))
    for s in (0, 1):
        out.append(_case(f"t4096_s{s}_tails", {"flash", "tails"}, T=4096, S=s, tails=True))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Logits N(0, 2^2); a random table of 6 distinct experts per id; ids that include 0, V - 1 and
    repeats. With `tails`, every second row has its 6 hashed logits drawn from one of TAILS, in turn,
    and one row mixes a huge logit with five underflowing ones."""
    p = case.params
    T, V = p["T"], p["V"]
    tid2eid = torch.rand(V, EXPERTS, generator=gen).topk(TOPK, dim=1).indices.to(torch.int32)
    input_ids = torch.randint(0, V, (T,), generator=gen, dtype=torch.int64)
    input_ids[: min(T, 2)] = torch.tensor([V - 1, 0][: min(T, 2)])
    if T >= 8:
        input_ids[T // 2 : T // 2 + T // 8] = input_ids[: T // 8]  # the same tokens again
    logits = torch.randn(T, EXPERTS, generator=gen) * 2.0
    if p["tails"]:
        hashed = tid2eid[input_ids].long()
        kinds = list(TAILS.values())
        for n, row in enumerate(range(1, T, 2)):
            lo, hi = kinds[n % len(kinds)]
            logits[row, hashed[row]] = lo + (hi - lo) * torch.rand(TOPK, generator=gen)
        mixed = torch.full((TOPK,), -300.0)
        mixed[0] = 50.0
        logits[0, hashed[0]] = mixed
    return {"router_logits": logits, "input_ids": input_ids, "tid2eid": tid2eid}


def _routed_scores(t: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hashed expert ids [T, 6] int64, exact sqrt-softplus scores [T, 6] float64)."""
    ids = t["tid2eid"][t["input_ids"].long()].long()
    x = t["router_logits"].double().gather(1, ids)
    return ids, torch.sqrt(x.clamp(min=0) + torch.log1p(torch.exp(-x.abs())))


def _underflow_rows(t: dict) -> torch.Tensor:
    return _routed_scores(t)[1].sum(1) < UNDERFLOW_SUM


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """Everything but the routed weights of the rows fp32 cannot score (see the module docstring)."""
    rows = _underflow_rows(t)
    keep = torch.ones(rows.numel(), TOPK + case.params["S"], dtype=torch.bool, device=rows.device)
    keep[rows, :TOPK] = False
    return {"topk_weights": keep}


def cost(case: Case) -> tuple[float, float]:
    """Per token: its id (8 B), its table row (24 B) and the 6 logits it selects (24 B) read; ids and
    weights written (8 B per slot). About ten operations per routed score."""
    T, K = case.params["T"], TOPK + case.params["S"]
    return float(T * (8 + TOPK * 4 * 2 + K * 8)), float(T * TOPK * 10)


# ---------------------------------------------------------------------------------------------- oracle


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    S = case.params["S"]
    ids, s = _routed_scores(t)
    w = s / (s.sum(1, keepdim=True) + EPS)
    T = ids.shape[0]
    shared_ids = (EXPERTS + torch.arange(S, device=ids.device)).expand(T, S)
    shared_w = torch.full((T, S), 1.0 / RSF, dtype=torch.float64, device=ids.device)
    return {"topk_weights": torch.cat([w, shared_w], 1), "topk_ids": torch.cat([ids, shared_ids], 1).int()}


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`ids_mismatch`: slots whose expert id differs (routed or shared), ceiling 0. `underflow_rows_bad`
    (tails cases): rows fp32 cannot score whose routed weights are not finite or not within 1e-6 of
    the exact ~0, ceiling 0."""
    out = [ids_mismatch(outputs["topk_ids"], oracle_out["topk_ids"], routed=TOPK)]
    rows = _underflow_rows(inputs)
    if bool(rows.any()):
        got = outputs["topk_weights"].to("cpu", torch.float64)[rows, :TOPK]
        exact = oracle_out["topk_weights"].to("cpu")[rows, :TOPK]
        bad = (~got.isfinite() | ((got - exact).abs() > 1e-6)).any(1)
        out.append(
            Metric(
                "underflow_rows_bad",
                float(bad.sum()),
                unit="count",
                detail={"rows": int(rows.sum()), "nonfinite": int((~got.isfinite()).any(1).sum())},
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- paths


def sglang_cuda(t: dict, case: Case) -> dict[str, torch.Tensor]:
    mod = import_module("sglang.kernels.ops.moe.dsv4")
    w, ids = mod.hash_topk(
        router_logits=t["router_logits"],
        input_ids=t["input_ids"],
        tid2eid=t["tid2eid"],
        num_fused_shared_experts=case.params["S"],
        routed_scaling_factor=RSF,
        scoring_func=SCORING,
    )
    return {"topk_weights": w, "topk_ids": ids}


def sglang_triton(t: dict, case: Case, rsf: float = RSF) -> dict[str, torch.Tensor]:
    mod = load_by_path("kernels/ops/moe/triton_hash_topk.py")
    w, ids = mod.hash_topk_triton(t["router_logits"], t["input_ids"], t["tid2eid"], case.params["S"], rsf, SCORING)
    return {"topk_weights": w, "topk_ids": ids}


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """`HashTopK._forward_torch` on a stand-in for the module: it reads only these attributes (the
    module's constructor needs a whole model context)."""
    mod = import_module("sglang.srt.layers.moe.hash_topk")
    S = case.params["S"]
    layer = SimpleNamespace(
        score_func=SCORING,
        topk=TOPK + S,
        num_shared_topk_slots=S,
        num_fused_shared_experts=S,  # the same count, under its name up to SGLang 0.5.22
        num_experts=EXPERTS,
        routed_scaling_factor=RSF,
        tid2eid=t["tid2eid"],
    )
    w, ids = mod.HashTopK._forward_torch(layer, t["router_logits"], t["input_ids"])
    return {"topk_weights": w, "topk_ids": ids}


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition in hash_topk.cuh"),
    Path(
        "sglang.cuda",
        sglang_cuda,
        needs_cuda=True,
        note="kernels/ops/moe/dsv4.py:hash_topk, the JIT CUDA kernel SM120 runs (SGLANG_OPT_USE_FUSED_HASH_TOPK)",
    ),
    Path("sglang.triton", sglang_triton, note="kernels/ops/moe/triton_hash_topk.py, the ROCm path, by file path"),
    Path("sglang.torch", sglang_torch, note="HashTopK._forward_torch (SGLANG_OPT_USE_FUSED_HASH_TOPK=0)"),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.moe.dsv4:hash_topk": "",
}

# the findings the tails cases expose (see the module docstring): they run everywhere and are shown as allowlisted
KNOWN = [
    Known(
        "sglang.triton", "*tails*", "*", "2027-03-31",
        "hash_topk_triton (the ROCm fallback) takes log(1 + exp(-|x|)) for log1p and renormalises without the "
        "epsilon: NaN weights on rows whose 6 hashed logits are all below about -17",
    ),
    Known(
        "sglang.torch", "*_s1_tails", "*calc_diff", "2027-03-31",
        "HashTopK._forward_torch weights the shared slot sum(routed) / rsf: 0 on a row whose scores all "
        "underflow, where the kernels give 1 / rsf",
    ),
]  # fmt: skip

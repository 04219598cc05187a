"""DeepSeek-V4 router top-k: sqrt-softplus scores, a per-expert correction bias for the choice only, the
top 6 of 256 experts, renormalised and scaled by the routed scaling factor. It routes every MoE layer
past the 3 hash layers (kernels/hash_topk.py).

Call chain on SM120 (0.5.23): `srt/models/deepseek_v2.py:DeepseekV2MoE.__init__` builds
`TopK(top_k=6, renormalize=True, use_grouped_topk=False, scoring_func="sqrtsoftplus",
correction_bias=gate.e_score_correction_bias (fp32: topk_method noaux_tc, no aiter),
routed_scaling_factor=1.5, apply_routed_scaling_factor_on_output=experts.should_fuse_...)`; the
flashinfer_mxfp4 backend's `Mxfp4FlashinferCutlassMoEMethod.fuse_routed_scaling_factor_in_topk = True`,
so the factor is applied here (apply=True), and fp4 experts take the STANDARD output format.
`TopK.forward_cuda` -> `select_experts` -> `srt/layers/moe/topk.py:biased_topk_jit_kernel_impl` ->
`kernels/ops/moe/moe_fused_gate.py:moe_fused_gate(..., renormalize_epsilon=0.0,
sqrtsoftplus_log1p=False, num_token_non_padded=<device scalar or None>)` -> `_router_triton_kernel`.

What else moe_fused_gate could take, and why V4 on SM120 does not:
  - `_topk_gate_small_m` (`_sm120_router_top22_kernel`): only with SGLANG_OPT_SM120_MTP_ROUTER_TOP22=1
    (default off), a CUDA tensor on compute capability exactly (12, 0), 2 <= M <= 16, 512 experts,
    fp32 contiguous scores and bias, top-22, sigmoid, no shared slot/group/softcap/ids/padding/epsilon/
    pack/log1p. No DeepSeek-V4 layer has that shape; the `top22` cases (sigmoid, 512 experts, top-22,
    renormalised, unscaled) cover it as the path `sglang.triton_top22` on SM120 GPUs only (Triton's
    interpreter cannot run it: `~` on a uint32 tensor raises OverflowError there).
  - `moe_route_radix`: sigmoid only (and 896 experts, top-16): never for V4.
The kernel does not depend on M for V4 (BLOCK_M = 1 for 256 experts; the SM103 PDL rule is not SM120's).

Inputs: `logits` [T, N] fp32 (the router GEMM's output, kernels/router_gemm.py), `bias` [N] fp32,
`n_live` [1] int32 (the device scalar num_token_non_padded; rows past it are CUDA-graph padding; only
in the `pad` cases).
Outputs: `topk_weights` [T, K + S] fp32, `topk_ids` [T, K + S] int32, S fused shared slots (0 by default:
V4 fuses its shared expert only under --enforce-shared-experts-fusion).

The definition (the oracle): s = sqrt(softplus(x)) (sigmoid(x) in the top22 cases), b = s + bias; the K
largest b, equal b broken by the lowest expert id (the kernel's rule, `lane_id`'s min, and the top22
kernel's key `0xFFFFFFFF - n`); w = s / sum(s) over those K, times rsf when applied; the shared slot j
has id N + j and weight 1 (applied) or 1/rsf; a padded row has weights 0 and ids -1.

How outputs are compared: every path's routed slots are put in expert-id order (the id-weight pairs kept
together) before the comparison: the MoE kernels that consume them are order-insensitive (SGLang's own
radix router returns them in id order), and SGLang's torch reference asks topk for an unsorted result.
So `ids_mismatch` judges the set of ids exactly, ties by the lowest-id rule; the order of the slots is
not judged. The inputs keep every row's gap between its K-th and (K+1)-th b above 1e-5 (fp32 rounds b
to ~5e-7 at b ~ 9) except in the rows built as exact ties, so a fp32 path choosing differently from the
fp64 oracle is a bug, not a near tie.

Tail rows: in the `ties` cases every second row has an exact tie across the top-K boundary (3 experts
of equal bias and equal logit for the last 2 places); in the `tails` cases, "deep" rows (every logit in [-30, -18]:
scores 1e-4..1e-7, the choice made by bias and score together); "underflow" rows (every logit in
[-400, -200]: every fp32 score is 0); "huge" rows (3 logits in [20, 80]); one mixed row (one logit 50, the
rest -300). A row whose every chosen exact score is below 2^-63 (its softplus below fp32's smallest normal)
is one no fp32 path can weigh: its routed weights are left out of the drift and checked by
`underflow_rows_bad` (finite, in [0, rsf]); its ids are still compared (the bias decides them).
"""

from __future__ import annotations

import inspect

import torch

from harness.parity.op import (
    ORACLE,
    SM120,
    Case,
    Known,
    Metric,
    Path,
    Unavailable,
    case_maker,
    ids_mismatch,
    import_module,
)

OP = "moe_fused_gate"
DTYPE = "fp32"
PRIMARY = "topk_weights"
OUTPUTS = {"topk_weights": "float32", "topk_ids": "int32"}
TOLERANCE = (1e-6, 1e-5)
CEILINGS = {"ids_mismatch": 0.0, "underflow_rows_bad": 0.0}
EXPERTS, TOPK, RSF, SCORING = 256, 6, 1.5, "sqrtsoftplus"
MIN_GAP = 1e-5  # least K-th to (K+1)-th biased-score gap of a row that is not a planted tie
UNSCORABLE = 2.0**-63  # sqrt of fp32's smallest normal: a score below it has a denormal softplus
TIE_EXPERTS = (101, 37, 180)  # experts given one shared bias value: the exact ties of the tie rows
TAILS = ("deep", "underflow", "huge")
TOP22_ENV = "SGLANG_OPT_SM120_MTP_ROUTER_TOP22"

_case = case_maker(N=EXPERTS, K=TOPK, S=0, scoring=SCORING, rsf=RSF, apply=True, tails="", live=None)
_top22 = dict(N=512, K=22, scoring="sigmoid", rsf=1.0, apply=False)


def cases() -> list[Case]:
    out = [
        _case("tiny_t1_s0", {"tiny"}, T=1),
        _case("tiny_t16_s0_tails", {"tiny", "tails"}, T=16, tails="rows"),
        # exact ties: SGLang's torch reference breaks them otherwise than its kernels (torch.topk's
        # order), a known finding (KNOWN), run everywhere, allowlisted
        _case("tiny_t8_s0_ties", {"tiny", "ties"}, T=8, tails="ties"),
        _case("tiny_t8_s1_pad5", {"tiny", "pad"}, T=8, S=1, live=5),
        # the top22 kernel's shape: on the CPU only the general kernel runs it
        _case("tiny_top22_m4", {"tiny", "top22"}, T=4, **_top22),
    ]
    # decode batches and prefill chunks of DeepSeek-V4-Flash
    for t in (1, 2, 8, 16, 64, 256, 1024, 2048, 4096, 8192):
        out.append(_case(f"{'b' if t <= 256 else 't'}{t}_s0", {"flash"}, T=t))
    for t in (8, 2048):
        out.append(_case(f"{'b' if t <= 256 else 't'}{t}_s1", {"flash"}, T=t, S=1))
    out.append(_case("b64_s0_pad37", {"flash", "pad"}, T=64, live=37))
    out.append(_case("t4096_s0_tails", {"flash", "tails"}, T=4096, tails="rows"))
    out.append(_case("t4096_s1_tails", {"flash", "tails"}, T=4096, S=1, tails="rows"))
    out.append(_case("t4096_s0_ties", {"flash", "ties"}, T=4096, tails="ties"))
    # the top22 kernel's M range 2..16 and both sides of it (1 and 17 take the general kernel)
    for m in (1, 2, 16, 17, 64):
        out.append(_case(f"top22_m{m}", {"flash", "top22"}, T=m, **_top22))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def _scores(x: torch.Tensor, scoring: str) -> torch.Tensor:
    """float64 scores from the definition."""
    x = x.double()
    if scoring == "sigmoid":
        return torch.sigmoid(x)
    return torch.sqrt(x.clamp(min=0) + torch.log1p(torch.exp(-x.abs())))


def _gap(logits: torch.Tensor, bias: torch.Tensor, p: dict) -> torch.Tensor:
    """Per row, the fp64 gap between the K-th and (K+1)-th biased score."""
    b = _scores(logits, p["scoring"]) + bias.double()
    top = b.topk(p["K"] + 1, dim=1).values
    return top[:, -2] - top[:, -1]


def make_inputs(case: Case, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Logits N(0, 2^2); a bias spread over [-0.1, 0.1] with every gap >= 2e-4 but TIE_EXPERTS equal;
    rows redrawn until no near tie; with `tails`, every second row a tie row ("ties") or one of the
    other kinds of the module docstring in turn, and row 0 the mixed row ("rows")."""
    p = dict(case.params)
    T, N = p["T"], p["N"]
    step = 0.2 / N
    bias = torch.randperm(N, generator=gen).double() * step - 0.1 + torch.rand(N, generator=gen) * step * 0.25
    bias[list(TIE_EXPERTS)] = float(bias[TIE_EXPERTS[0]])
    bias = bias.float()
    logits = torch.randn(T, N, generator=gen) * 2.0
    for _ in range(100):
        near = _gap(logits, bias, p) < MIN_GAP
        if not bool(near.any()):
            break
        logits[near] = torch.randn(int(near.sum()), N, generator=gen) * 2.0
    else:
        raise RuntimeError("could not draw logits without near ties")
    if p["tails"]:
        for n, row in enumerate(range(1, T, 2)):
            kind = "tie" if p["tails"] == "ties" else TAILS[n % len(TAILS)]
            for _ in range(100):
                x = _tail_row(kind, N, p["K"], gen)
                if kind == "tie" or float(_gap(x[None], bias, p)[0]) >= MIN_GAP:
                    break
            logits[row] = x
    if p["tails"] == "rows":
        logits[0] = -300.0
        logits[0, int(torch.randint(0, N, (1,), generator=gen))] = 50.0
    if p["live"] is not None:
        logits[p["live"] :] = torch.randn(T - p["live"], N, generator=gen) * 1e3  # stale padding
    out = {"logits": logits.contiguous(), "bias": bias}
    if p["live"] is not None:
        out["n_live"] = torch.tensor([p["live"]], dtype=torch.int32)  # [1]: a 0-d tensor cannot be stored
    return out


def _tail_row(kind: str, N: int, K: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "deep":
        return -30.0 + 12.0 * torch.rand(N, generator=gen)
    if kind == "underflow":
        return -400.0 + 200.0 * torch.rand(N, generator=gen)
    x = torch.randn(N, generator=gen) * 2.0
    if kind == "huge":
        x[torch.randperm(N, generator=gen)[:3]] = 20.0 + 60.0 * torch.rand(3, generator=gen)
        return x
    # tie: K - 2 clear winners, then TIE_EXPERTS equal for the last 2 places, everything else far below
    x = x - 6.0
    others = [e for e in torch.randperm(N, generator=gen).tolist() if e not in TIE_EXPERTS][: K - 2]
    x[others] = 8.0 + torch.rand(K - 2, generator=gen)
    x[list(TIE_EXPERTS)] = 5.0
    return x


def _live_rows(t: dict, T: int) -> torch.Tensor:
    rows = torch.arange(T, device=t["logits"].device)
    return rows < int(t["n_live"]) if "n_live" in t else torch.ones(T, dtype=torch.bool, device=rows.device)


def _unscorable_rows(t: dict, case: Case) -> torch.Tensor:
    p = case.params
    s = _scores(t["logits"], p["scoring"])
    ids = _choose(s + t["bias"].double(), p["K"])
    return (s.gather(1, ids).amax(1) < UNSCORABLE) & _live_rows(t, s.shape[0])


def valid_region(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """Everything but the routed weights of the rows fp32 cannot weigh (module docstring)."""
    rows = _unscorable_rows(t, case)
    keep = torch.ones(rows.numel(), case.params["K"] + case.params["S"], dtype=torch.bool, device=rows.device)
    keep[rows, : case.params["K"]] = False
    return {"topk_weights": keep}


def cost(case: Case) -> tuple[float, float]:
    """Logits and bias read, weights and ids written; per logit about ten operations for the score and
    one compare-select per chosen expert."""
    p = case.params
    T, N, K = p["T"], p["N"], p["K"] + p["S"]
    return float(T * N * 4 + N * 4 + T * K * 8), float(T * N * (10 + p["K"]))


# ---------------------------------------------------------------------------------------------- oracle


def _choose(b: torch.Tensor, K: int) -> torch.Tensor:
    """The K largest of each row, equal values broken by the lowest index: a stable descending sort."""
    return torch.sort(b, dim=1, descending=True, stable=True).indices[:, :K]


def canonical(w: torch.Tensor, ids: torch.Tensor, K: int) -> dict[str, torch.Tensor]:
    """The routed slots in expert-id order, each weight kept with its id (the shared slots stay last)."""
    order = ids[:, :K].long().argsort(dim=1, stable=True)
    w, ids = w.clone(), ids.clone()
    w[:, :K] = w[:, :K].gather(1, order)
    ids[:, :K] = ids[:, :K].gather(1, order)
    return {"topk_weights": w, "topk_ids": ids.int()}


def oracle(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """float64 from the definition in the module docstring."""
    p = case.params
    K, S, N = p["K"], p["S"], p["N"]
    s = _scores(t["logits"], p["scoring"])
    ids = _choose(s + t["bias"].double(), K)
    chosen = s.gather(1, ids)
    w = chosen / chosen.sum(1, keepdim=True)
    if p["apply"]:
        w = w * p["rsf"]
    T = ids.shape[0]
    shared_w = torch.full((T, S), 1.0 if p["apply"] else 1.0 / p["rsf"], dtype=torch.float64, device=w.device)
    shared_ids = (N + torch.arange(S, device=ids.device)).expand(T, S)
    w, ids = torch.cat([w, shared_w], 1), torch.cat([ids, shared_ids], 1)
    live = _live_rows(t, T)
    w[~live], ids[~live] = 0.0, -1
    return canonical(w, ids, K)


def metrics(outputs: dict, oracle_out: dict, inputs: dict, case: Case) -> list[Metric]:
    """`ids_mismatch`: slots whose expert id differs from the oracle's (the routed ids as a set, ties by
    the lowest id; shared and padded slots by value), ceiling 0. `underflow_rows_bad` (where such rows
    exist): rows fp32 cannot weigh whose routed weights are not finite or not in [0, rsf], ceiling 0."""
    K = case.params["K"]
    out = [ids_mismatch(outputs["topk_ids"], oracle_out["topk_ids"], routed=K)]
    rows = _unscorable_rows({k: v.to("cpu") for k, v in inputs.items()}, case)
    if bool(rows.any()):
        got = outputs["topk_weights"].to("cpu", torch.float64)[rows, :K]
        limit = case.params["rsf"] if case.params["apply"] else 1.0
        bad = (~got.isfinite() | (got < 0) | (got > limit * (1 + 1e-6))).any(1)
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


def _gate_args(t: dict, case: Case) -> dict:
    """moe_fused_gate's arguments as biased_topk_jit_kernel_impl passes them on a CUDA host (SM120)."""
    p = case.params
    return dict(
        topk=p["K"] + p["S"],
        scoring_func=p["scoring"],
        num_fused_shared_experts=p["S"],
        renormalize=True,
        routed_scaling_factor=p["rsf"],
        apply_routed_scaling_factor_on_output=p["apply"],
        num_token_non_padded=t.get("n_live"),
        packed_out=None,
        sqrtsoftplus_log1p=False,  # True only for deepseek_v41
    )


def sglang_triton(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """moe_fused_gate -> _router_triton_kernel, called as SM120 calls it (the padding count passed:
    `_fused_gate_masks_padded_rows` is true for sqrtsoftplus on CUDA)."""
    mod = import_module("sglang.kernels.ops.moe.moe_fused_gate")
    args = _gate_args(t, case)
    if case.params["scoring"] != "sqrtsoftplus":
        args["num_token_non_padded"] = None  # biased_topk_jit_kernel_impl drops it for sigmoid
    # before SGLang 0.5.21 the router took no padding count, packed output or log1p option (their defaults
    # are what it computed): the padded rows were masked after it, by select_experts
    takes = inspect.signature(mod.moe_fused_gate).parameters
    masked_after = args["num_token_non_padded"] is not None and "num_token_non_padded" not in takes
    w, ids = mod.moe_fused_gate(t["logits"], t["bias"], **{k: v for k, v in args.items() if k in takes})
    if masked_after:
        _pad_after(t, w, ids)
    return canonical(w, ids, case.params["K"])


def _pad_after(t: dict, w: torch.Tensor, ids: torch.Tensor) -> None:
    """What select_experts' post-processing does to the padded rows where the router did not."""
    if "n_live" not in t:
        return
    topk = import_module("sglang.srt.layers.moe.topk")
    topk._mask_topk_ids_padded_region(ids, t["n_live"])
    topk._zero_topk_weights_padded_region(w, t["n_live"])


def sglang_biased_topk(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """topk.py:biased_topk_jit_kernel_impl, the function select_experts calls. Off CUDA it does not hand
    the padding count to the kernel (`_fused_gate_masks_padded_rows` needs CUDA), so select_experts'
    own masking finishes the padded rows there."""
    topk = import_module("sglang.srt.layers.moe.topk")
    p = case.params
    w, ids = topk.biased_topk_jit_kernel_impl(
        hidden_states=t["logits"],  # only its row count is read
        gating_output=t["logits"],
        correction_bias=t["bias"],
        topk=p["K"] + p["S"],
        renormalize=True,
        scoring_func=p["scoring"],
        num_fused_shared_experts=p["S"],
        routed_scaling_factor=p["rsf"],
        num_token_non_padded=t.get("n_live"),
        apply_routed_scaling_factor_on_output=p["apply"],
    )
    if not t["logits"].is_cuda or p["scoring"] != "sqrtsoftplus":
        _pad_after(t, w, ids)
    return canonical(w, ids, p["K"])


def sglang_torch(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """topk.py:biased_topk_impl, SGLang's torch version of the biased router, run eagerly (its
    torch.compile wrapper's `__wrapped__`): it takes the top K + S and overwrites the last with the
    shared slot, so with S = 1 its routed ids are the top K. Padded rows as select_experts masks them."""
    topk = import_module("sglang.srt.layers.moe.topk")
    p = case.params
    fn = getattr(topk.biased_topk_impl, "__wrapped__", topk.biased_topk_impl)
    w, ids = fn(
        t["logits"],
        t["logits"],
        t["bias"],
        p["K"] + p["S"],
        True,
        p["scoring"],
        p["S"],
        p["rsf"],
        None,
        None,
        p["apply"],
    )
    _pad_after(t, w, ids)
    return canonical(w, ids, p["K"])


def sglang_triton_top22(t: dict, case: Case) -> dict[str, torch.Tensor]:
    """moe_fused_gate with SGLANG_OPT_SM120_MTP_ROUTER_TOP22=1, on the shapes it sends to
    `_topk_gate_small_m` (`_sm120_router_top22_kernel`); other cases are not this path's."""
    p = case.params
    if not (p["N"] == 512 and p["K"] == 22 and p["scoring"] == "sigmoid" and 2 <= p["T"] <= 16):
        raise Unavailable("the top22 kernel takes only sigmoid, 512 experts, top-22, 2 <= M <= 16")
    if torch.cuda.get_device_capability(t["logits"].device) != (12, 0):
        raise Unavailable("moe_fused_gate takes the top22 kernel only on compute capability 12.0")
    mod = import_module("sglang.kernels.ops.moe.moe_fused_gate")
    w, ids = mod.moe_fused_gate(t["logits"], t["bias"], **_gate_args(t, case))
    return canonical(w, ids, p["K"])


PATHS = [
    Path(ORACLE, oracle, golden=True, note="float64 from the definition in the module docstring"),
    Path("sglang.triton", sglang_triton, note="moe_fused_gate -> _router_triton_kernel, SM120's arguments"),
    Path("sglang.biased_topk", sglang_biased_topk, note="topk.py:biased_topk_jit_kernel_impl (select_experts' call)"),
    Path("sglang.torch", sglang_torch, note="topk.py:biased_topk_impl, eager: SGLang's torch reference"),
    Path(
        "sglang.triton_top22",
        sglang_triton_top22,
        archs=SM120,
        env={TOP22_ENV: "1"},
        note="_topk_gate_small_m / _sm120_router_top22_kernel (SGLANG_OPT_SM120_MTP_ROUTER_TOP22, cc 12.0)",
    ),
]


# the SGLang functions of kernels/inventory/ its paths run, and what its cases leave out (harness/parity/coverage.py)
COVERS = {
    "sglang.kernels.ops.moe.moe_fused_gate:moe_fused_gate": (
        "sqrtsoftplus_log1p and packed_out (DeepSeek-V4.1), grouped routing, softmax/softcap and the"
        " per-token alternative bias (other models); the radix fast path (sigmoid, 896 experts)"
    ),
    "sglang.kernels.ops.moe.moe_fused_gate:_router_triton_kernel": "the same branches as moe_fused_gate",
    "sglang.srt.layers.moe.topk:biased_topk_jit_kernel_impl": "the aiter branch (ROCm) and the packed output",
    # the SM120 top-22 path (sglang.triton_top22): SM120 GPUs only, Triton's interpreter cannot run it
    "sglang.kernels.ops.moe.moe_fused_gate:_topk_gate_small_m": "",
    "sglang.kernels.ops.moe.moe_fused_gate:_sm120_router_top22_kernel": "",
}

# run everywhere, shown as allowlisted
KNOWN = [
    Known(
        "sglang.torch", "*ties*", "*", "2027-03-31",
        "biased_topk_impl (SGLang's torch reference) breaks exact ties across the top-6 boundary by "
        "torch.topk's order, not by the lowest expert id as its Triton and CUDA kernels do",
    ),
]  # fmt: skip

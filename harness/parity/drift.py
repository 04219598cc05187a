"""Drift metrics, computed in float64 over the valid region of an output.

`calc_diff` is DeepGEMM's 1 - 2<x,y>/(<x,x> + <y,y>): 0 for equal tensors, scale-free, and about
half the squared relative error for small differences. Positions where the reference is finite but
the candidate is not make every error metric infinite: a NaN never hides inside a mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.results import metrics as M


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str = ""
    better: str = "lower"
    detail: dict[str, Any] = field(default_factory=dict)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def _prepare(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None):
    x, ref = _f64(x), _f64(ref)
    if x.shape != ref.shape:
        raise ValueError(f"shape {tuple(x.shape)} does not match the reference's {tuple(ref.shape)}")
    mask = torch.ones_like(ref, dtype=torch.bool) if valid is None else valid.to("cpu").expand_as(ref)
    return x, ref, mask


def nonfinite_mismatch(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> int:
    """Positions where NaN-ness, inf-ness or the sign of an infinity differ."""
    x, ref, mask = _prepare(x, ref, valid)
    differ = (x.isnan() != ref.isnan()) | (x.isinf() != ref.isinf())
    differ |= x.isinf() & ref.isinf() & (x.sign() != ref.sign())
    return int((differ & mask).sum())


def _finite_pairs(x, ref, mask):
    """Values at valid positions where the reference is finite; None if the candidate is not there."""
    sel = mask & ref.isfinite()
    xs, rs = x[sel], ref[sel]
    return (None, rs) if not bool(xs.isfinite().all()) else (xs, rs)


def calc_diff(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    xs, rs = _finite_pairs(*_prepare(x, ref, valid))
    if xs is None:
        return math.inf
    denom = float((xs * xs).sum() + (rs * rs).sum())
    return 0.0 if denom == 0.0 else 1.0 - 2.0 * float((xs * rs).sum()) / denom


def cosine(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    xs, rs = _finite_pairs(*_prepare(x, ref, valid))
    if xs is None:
        return math.nan
    nx, nr = float(xs.norm()), float(rs.norm())
    if nx == 0.0 or nr == 0.0:
        return 1.0 if nx == nr else 0.0
    return float((xs * rs).sum()) / (nx * nr)


def rmse(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    xs, rs = _finite_pairs(*_prepare(x, ref, valid))
    if xs is None:
        return math.inf
    return float(((xs - rs) ** 2).mean().sqrt()) if rs.numel() else 0.0


def worst_row_calc_diff(
    x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[float, list[int] | None]:
    """calc_diff of each row (the last dimension: an attention head's output, a GEMM row) and the
    worst of them with its index. A fault confined to one token, one scale or one index barely moves
    the global calc_diff but stands out in the rows it touches."""
    x, ref, mask = _prepare(x, ref, valid)
    if x.dim() < 2:
        return calc_diff(x, ref, valid), None
    sel = mask & ref.isfinite()
    bad = (sel & ~x.isfinite()).any(-1)
    xs, rs = torch.where(sel, x, 0.0).nan_to_num(), torch.where(sel, ref, 0.0)
    denom = (xs * xs).sum(-1) + (rs * rs).sum(-1)
    rows = torch.where(denom > 0, 1.0 - 2.0 * (xs * rs).sum(-1) / denom.clamp(min=1e-300), 0.0)
    rows = torch.where(bad, math.inf, rows)
    return _argmax_where(rows, sel.any(-1))


def ids_mismatch(ids: torch.Tensor, want: torch.Tensor, routed: int) -> Metric:
    """`ids_mismatch`: slots of a top-k whose expert id differs from the oracle's (the first `routed`
    columns routed, the rest shared slots), with the first wrong slot, for an op's metrics()."""
    ids, want = ids.to("cpu").long(), want.to("cpu").long()
    if ids.shape != want.shape:
        raise ValueError(f"topk_ids shape {tuple(ids.shape)} is not the oracle's {tuple(want.shape)}")
    wrong = ids != want
    first = wrong.nonzero()[0].tolist() if bool(wrong.any()) else None
    detail = {
        "rows": int(wrong.any(1).sum()),
        "routed": int(wrong[:, :routed].sum()),
        "shared": int(wrong[:, routed:].sum()),
        "first": first,
        "got": int(ids[tuple(first)]) if first else None,
        "want": int(want[tuple(first)]) if first else None,
    }
    return Metric("ids_mismatch", float(wrong.sum()), unit="count", detail=detail)


def _argmax_where(err: torch.Tensor, sel: torch.Tensor) -> tuple[float, list[int] | None]:
    err = torch.where(sel, err, torch.full_like(err, -1.0))
    flat = int(err.argmax()) if err.numel() else 0
    value = float(err.reshape(-1)[flat]) if err.numel() else -1.0
    if value < 0:
        return 0.0, None
    return value, [int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape)]


def max_abs(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[float, list[int] | None]:
    """Largest |x - ref| over valid positions where ref is finite, and where it is (inf if x is not finite)."""
    x, ref, mask = _prepare(x, ref, valid)
    sel = mask & ref.isfinite()
    err = (x - ref).abs().nan_to_num(nan=math.inf)
    return _argmax_where(err, sel)


def max_rel(x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None, floor: float = 0.0):
    """Largest |x - ref| / |ref| over valid positions with |ref| > floor (relative error is meaningless
    near zero; the floor is the op's atol)."""
    x, ref, mask = _prepare(x, ref, valid)
    sel = mask & ref.isfinite() & (ref.abs() > floor)
    err = ((x - ref).abs() / ref.abs().clamp(min=1e-300)).nan_to_num(nan=math.inf)
    return _argmax_where(err, sel)


def frac_outside(
    x: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float, valid: torch.Tensor | None = None
) -> float:
    """Fraction of valid, reference-finite positions with |x - ref| > atol + rtol |ref| (torch.isclose's rule)."""
    x, ref, mask = _prepare(x, ref, valid)
    sel = mask & ref.isfinite()
    n = int(sel.sum())
    if n == 0:
        return 0.0
    bad = ~((x - ref).abs() <= atol + rtol * ref.abs())  # NaN compares False, so it counts as outside
    return int((bad & sel).sum()) / n


def drift(
    x: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float, valid: torch.Tensor | None = None
) -> list[Metric]:
    """The full set for an op's primary output."""
    ma, ma_at = max_abs(x, ref, valid)
    mr, mr_at = max_rel(x, ref, valid, floor=atol)
    wr, wr_at = worst_row_calc_diff(x, ref, valid)
    return [
        Metric(M.CALC_DIFF, calc_diff(x, ref, valid)),
        Metric(M.WORST_ROW_CALC_DIFF, wr, detail={"row": wr_at}),
        Metric(M.COSINE, cosine(x, ref, valid), better="higher"),
        Metric(M.MAX_ABS, ma, detail={"index": ma_at}),
        Metric(M.MAX_REL, mr, detail={"index": mr_at, "floor": atol}),
        Metric(M.FRAC_OUTSIDE_TOL, frac_outside(x, ref, atol, rtol, valid), detail={"atol": atol, "rtol": rtol}),
        Metric(M.NONFINITE_MISMATCH, float(nonfinite_mismatch(x, ref, valid)), unit="count"),
        Metric(M.RMSE, rmse(x, ref, valid)),
    ]


def secondary_drift(name: str, x: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor | None = None) -> list[Metric]:
    """For side outputs such as an attention's LSE: the worst error and the non-finite mismatches."""
    ma, ma_at = max_abs(x, ref, valid)
    return [
        Metric(f"{name}.max_abs", ma, detail={"index": ma_at}),
        Metric(f"{name}.nonfinite_mismatch", float(nonfinite_mismatch(x, ref, valid)), unit="count"),
    ]


def rmse_ratio(x: torch.Tensor, golden: torch.Tensor, oracle: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """RMSE(candidate, oracle) / RMSE(golden kernel, oracle): how much worse than the golden kernel."""
    num, den = rmse(x, oracle, valid), rmse(golden, oracle, valid)
    if den == 0.0:
        return 1.0 if num == 0.0 else math.inf
    return num / den

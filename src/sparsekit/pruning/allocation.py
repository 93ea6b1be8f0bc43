"""Per-decoder-layer sparsity: OWL and DLP allocations from Wanda scores, or a user file.

Every decoder layer l gets one sparsity s_l shared by all its pruned linears. The pure
functions here turn per-layer statistics into those values:

* `owl_outlier_ratio`: OWL's layerwise outlier distribution (LOD) of a layer, in percent.
* `dlp_importance`: DLP's layer importance (mean, or median, of the layer's Wanda scores).
* `allocate`: values -> sparsities with the requested parameter-weighted mean.
(The allocation file, format below, is read by `sparsekit.files.allocation`.)

Allocation formulas (S = target, v_l = the layer value, n_l its min-max normalisation)::

    n_l = (v_l - min v) / (max v - min v)          (n_l = 0 for all l if max v == min v)
    OWL: s_l = S - 2 lam   (n_l - nbar)            more outliers -> pruned less
    DLP: s_l = S + 2 alpha (n_l - nbar)            larger mean score -> pruned more

so the spread (max - min) of s is exactly 2 lam (OWL, default 0.08) or 2 alpha (DLP, default
0.15), as in the references. (DLP's ``r_l = 1 - v_l / sum v`` normalised to [0, 1] is
``1 - n_l``, which gives the form above.) The references centre on the *unweighted* mean,
``nbar = mean_l n_l``; layers differ in size (e.g. dense and MoE blocks), so here nbar is the
mean weighted by each layer's parameter count, which makes the parameter-weighted mean
sparsity equal S. The references clamp s <= 0 to 0.01 and have no upper clamp; here every
value is clamped to [0, `max_sparsity`] (default 0.99, so a layer is never fully removed) and
what clamping removes is redistributed: all values get one common shift c,
``s_l = clamp(S + offset_l + c)``, with c chosen (bisection on a monotone function) so that
the weighted mean is S again. That equals iteratively spreading the clamped excess evenly
over the layers still inside the bounds. An equal value for every layer (a flat profile)
gives the uniform allocation.

"""

from __future__ import annotations

import math
from typing import Sequence

import torch


__all__ = [
    "KINDS",
    "owl_outlier_ratio",
    "dlp_importance",
    "allocate",
    "weighted_mean",
]

KINDS = ("owl", "dlp")


def _pooled(scores: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    flat = [s.detach().reshape(-1) for s in scores if s.numel()]
    if not flat:
        raise ValueError(f"{name} needs at least one non-empty score tensor")
    return flat


def owl_outlier_ratio(scores: Sequence[torch.Tensor], m: float = 5.0) -> float:
    """OWL's LOD of one decoder layer, in percent (0-100).

    All Wanda scores ``|W_ij| sqrt(s_j)`` of the layer's linears are pooled into A;
    ``LOD = 100 * #{a in A : a > m * mean(A)} / |A|`` (strictly greater; mean in fp64). The
    unit does not matter to `allocate`, which min-max normalises; percent matches the paper.
    """
    if not m > 0:
        raise ValueError(f"outlier multiplier m must be positive, got {m}")
    flat = _pooled(scores, "owl_outlier_ratio")
    total = sum(int(s.numel()) for s in flat)
    mean = sum(float(s.double().sum()) for s in flat) / total
    cut = m * mean
    above = sum(int((s.double() > cut).sum()) for s in flat)
    return 100.0 * above / total


def dlp_importance(scores: Sequence[torch.Tensor], reduction: str = "mean") -> float:
    """DLP's importance of one decoder layer: |mean| (default) or median of its pooled Wanda scores.

    The reference code uses the mean (its median option is read only by an unrelated,
    broken structured path); a third-party summary says the paper uses the median, which we
    could not verify, so the mean is the default and ``reduction="median"`` is offered. The
    median is the lower middle value for an even count (torch.median); it needs the pooled
    scores in memory at once.
    """
    flat = _pooled(scores, "dlp_importance")
    if reduction == "mean":
        total = sum(int(s.numel()) for s in flat)
        return abs(sum(float(s.double().sum()) for s in flat) / total)
    if reduction == "median":
        return abs(float(torch.cat([s.float() for s in flat]).median()))
    raise ValueError(f"reduction must be 'mean' or 'median', got {reduction!r}")


def weighted_mean(values: Sequence[float], weights: Sequence[int]) -> float:
    """``sum_l w_l v_l / sum_l w_l`` in float64."""
    total = float(sum(weights))
    return math.fsum(float(v) * float(w) for v, w in zip(values, weights)) / total


def allocate(
    kind: str,
    layer_values: Sequence[float],
    layer_params: Sequence[int],
    target: float,
    lam: float = 0.08,
    alpha: float = 0.15,
    max_sparsity: float = 0.99,
) -> list[float]:
    """Per-layer sparsities for OWL ("owl": values from `owl_outlier_ratio`) or DLP ("dlp":
    values from `dlp_importance`); see the module docstring for the formulas.

    Guarantees: every value is in [0, max_sparsity] (so < 1) and the mean weighted by
    `layer_params` equals `target` to within 1e-9. Raises ValueError for an unknown kind,
    mismatched or empty lists, non-finite values, non-positive parameter counts, a negative
    spread, or a target outside [0, max_sparsity].
    """
    if kind not in KINDS:
        raise ValueError(f"unknown allocation {kind!r}: use one of {', '.join(KINDS)}")
    values = [float(v) for v in layer_values]
    params = [int(p) for p in layer_params]
    if not values or len(values) != len(params):
        raise ValueError(f"allocate needs one value and one parameter count per layer, got {len(values)} "
                         f"values and {len(params)} counts")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("allocate: layer values must be finite")
    if any(p <= 0 for p in params):
        raise ValueError("allocate: parameter counts must be positive")
    if not 0.0 < max_sparsity < 1.0:
        raise ValueError(f"max_sparsity must be in (0, 1), got {max_sparsity}")
    if not 0.0 <= float(target) <= max_sparsity:
        raise ValueError(f"target sparsity {target} is outside [0, {max_sparsity}]")
    spread = 2.0 * float(lam if kind == "owl" else alpha)
    if not spread >= 0 or not math.isfinite(spread):
        raise ValueError("allocate: lam and alpha must be finite and >= 0")

    lo, hi = min(values), max(values)
    norm = [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in values]
    centre = weighted_mean(norm, params)
    sign = -1.0 if kind == "owl" else 1.0
    base = [float(target) + sign * spread * (n - centre) for n in norm]

    def clamped(shift: float) -> list[float]:
        return [min(max(b + shift, 0.0), max_sparsity) for b in base]

    def excess(shift: float) -> float:  # nondecreasing in shift
        return weighted_mean(clamped(shift), params) - float(target)

    if abs(excess(0.0)) <= 1e-12:
        return clamped(0.0)
    a, b = -1.0 - spread, 1.0 + spread  # excess(a) <= 0 <= excess(b): every value clamps at a bound
    for _ in range(200):
        mid = 0.5 * (a + b)
        if excess(mid) < 0:
            a = mid
        else:
            b = mid
        if b - a < 1e-15:
            break
    out = clamped(b)
    if abs(weighted_mean(out, params) - float(target)) > 1e-9:  # cannot happen for a valid target
        raise ValueError(f"allocate could not reach the target sparsity {target}")
    return out



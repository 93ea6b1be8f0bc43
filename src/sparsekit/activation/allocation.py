"""Greedy per-site allocation of activation sparsity inside one decoder block (after TEAL).

Every block gets the same target *effective* sparsity ``S(p) = sum_c w_c p_c / sum_c w_c``
(w_c: the weights a zeroed entry of site c lets a kernel skip, e.g. out x in of its linear, so S
is the fraction of the block's sparsifiable weight reads saved); the search only decides how S
is split among the block's sites. There is no reallocation across blocks: the mean over layers
stays the target, as with uniform thresholds.

Algorithm (`greedy_allocation`), from p = 0:

1. For every site c below ``max_sparsity``, try ``p_c + step`` (capped) and measure the block
   error E(trial) with `error_fn` (the engine runs the block on calibration inputs with the
   trial thresholds; `block_output_error` is TEAL's error).
2. Commit the site with the smallest error increase per skipped weight,
   ``(E(trial) - E(p)) / (delta_c * w_c)``; ties go to the earliest site in ``sites``.
3. Repeat until S(p) >= target; the last increase is trimmed so that S(p) == target exactly.

TEAL raises site c by ``step / w_c`` (relative to q) so that every trial skips the same number of
weights, and compares raw errors: the same comparison as step 2 when ``delta_c * w_c`` is equal
for all sites (``equal_weights=True`` reproduces those increments). With equal increments
instead, GQA's small k/v matrices do not jump by 0.2 or more per step. TEAL's per-model weights
table has wrong k/v entries for some models; here the weights come from the actual shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Allocation", "allocate_block", "block_output_error", "effective_sparsity", "greedy_allocation"]

_EPS = 1e-12


@dataclass
class Allocation:
    sparsities: dict[str, float]
    error: float
    evaluations: int
    path: list[tuple[str, float, float]] = field(default_factory=list)  # (site, S after, error after)


def effective_sparsity(sparsities: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """``sum_c w_c p_c / sum_c w_c``."""
    total = sum(float(weights[c]) for c in sparsities)
    return sum(float(weights[c]) * float(p) for c, p in sparsities.items()) / total


def greedy_allocation(sites: Sequence[str], weights: Mapping[str, float],
                      error_fn: Callable[[dict[str, float]], float], target: float, *,
                      step: float = 0.05, max_sparsity: float = 1.0, equal_weights: bool = False) -> Allocation:
    """Per-site sparsities with effective sparsity `target` (module docstring). Pure: the only
    side effects are the calls of ``error_fn(sparsities) -> float``."""
    sites = list(sites)
    if not sites:
        raise ValueError("greedy_allocation needs at least one site")
    if not 0.0 <= target <= max_sparsity <= 1.0:
        raise ValueError(f"need 0 <= target <= max_sparsity <= 1, got {target}, {max_sparsity}")
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    w = {c: float(weights[c]) for c in sites}
    if any(v <= 0 for v in w.values()):
        raise ValueError("site weights must be positive")
    total = sum(w.values())
    ref = w[sites[0]]
    inc = {c: (step * ref / w[c] if equal_weights else step) for c in sites}
    p = {c: 0.0 for c in sites}
    err = float(error_fn(dict(p)))
    evals = 1
    path: list[tuple[str, float, float]] = []
    s_now = 0.0
    while s_now < target - _EPS:
        best = None
        for c in sites:
            if p[c] >= max_sparsity - _EPS:
                continue
            new = min(max_sparsity, p[c] + inc[c])
            trial = dict(p)
            trial[c] = new
            e = float(error_fn(trial))
            evals += 1
            score = (e - err) / ((new - p[c]) * w[c])
            if best is None or score < best[0]:
                best = (score, c, new, e)
        if best is None:
            raise ValueError(f"target {target} is above what max_sparsity {max_sparsity} allows")
        _, c, new, e = best
        gain = (new - p[c]) * w[c] / total
        if s_now + gain > target + _EPS:  # trim the last step onto the target
            new = p[c] + (target - s_now) * total / w[c]
            p[c] = new
            e = float(error_fn(dict(p)))
            evals += 1
            s_now = target
        else:
            p[c] = new
            s_now = effective_sparsity(p, w)
        err = e
        path.append((c, s_now, err))
    return Allocation(dict(p), err, evals, path)


def block_output_error(y_ref: torch.Tensor, y: torch.Tensor, last_fraction: float = 0.25) -> float:
    """TEAL's block error: the L2 norm over the token axis of ``y_ref - y`` restricted to the last
    ``last_fraction`` of positions (from ``floor((1 - last_fraction) * T)``), averaged over the
    batch and hidden units. ``y: [B, T, H]`` (a 2-D input is one sequence)."""
    if y_ref.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(y_ref.shape)} vs {tuple(y.shape)}")
    a = y_ref.reshape(-1, *y_ref.shape[-2:]) if y_ref.dim() >= 2 else y_ref.reshape(1, -1, 1)
    b = y.reshape(a.shape)
    t0 = int((1.0 - last_fraction) * a.shape[1])
    d = (a[:, t0:].double() - b[:, t0:].double())
    return float(torch.linalg.vector_norm(d, ord=2, dim=1).mean())


def allocate_block(wrappers: Mapping, calibrations: Mapping, run_block: Callable[[], torch.Tensor],
                   target: float, *, weights: Mapping[str, float] | None = None, step: float = 0.05,
                   max_sparsity: float = 1.0, last_fraction: float = 0.25,
                   equal_weights: bool = False) -> Allocation:
    """Greedy allocation for one block whose sites are wrapped (``wrappers``: site name ->
    `ActSparse`; ``calibrations``: site name -> `SiteThresholds`). ``run_block()`` runs the block
    on its calibration inputs and returns the output (the same inputs every call). Weights default
    to each site's ``params``. The wrappers are left enabled with the thresholds of the result."""
    names = list(wrappers)
    weights = weights or {n: calibrations[n].site.params for n in names}
    for m in wrappers.values():
        m.enabled = False
    with torch.no_grad():
        y_ref = run_block()
    for m in wrappers.values():
        m.enabled = True

    def apply(p: dict[str, float]) -> None:
        for n in names:
            t, scale, _ = calibrations[n](p[n])
            wrappers[n].set_threshold(t, scale)

    def error_fn(p: dict[str, float]) -> float:
        apply(p)
        with torch.no_grad():
            return block_output_error(y_ref, run_block(), last_fraction)

    result = greedy_allocation(names, weights, error_fn, target, step=step, max_sparsity=max_sparsity,
                               equal_weights=equal_weights)
    apply(result.sparsities)
    return result

"""From sketches to the tensors and recipe that are saved with a model: per-site thresholds of a
method at a target sparsity (uniform, or per site from a greedy allocation).

Tensors (float32, see `sparsekit.files.thresholds`): ``<site>.threshold`` (scalar, or [C] for
CHESS's channel-wise thresholds) and ``<site>.scale`` ([C], WINA's column norms of that site's
linear). A site's recipe entry: ``{"where", "role", "sparsity" (its target), "calibrated" (the
zeroed fraction the sketch predicts on the calibration data), "bounds" ([lower, upper] on it)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsekit.activation.methods import ACTIVATION_METHODS
from sparsekit.activation.plan import Plan, Site
from sparsekit.activation.sketch import ActivationSketch
from sparsekit.activation.thresholds import (
    Mixture,
    Threshold,
    channel_thresholds,
    check_sparsity,
    solve_threshold,
)
from sparsekit.errors import UsageError

__all__ = ["SiteThresholds", "activation_section", "compute_thresholds", "site_thresholds"]


class SiteThresholds:
    """The thresholds of one site as a function of its target sparsity (memoized)."""

    def __init__(self, site: Site, sketch: ActivationSketch, *, scale: torch.Tensor | None = None,
                 channel_weights: torch.Tensor | None = None):
        if scale is not None and channel_weights is not None:
            raise ValueError("a site has either a scale (WINA) or channel weights (CHESS), not both")
        self.site = site
        self.scale = None if scale is None else scale.detach().to("cpu", torch.float32).reshape(-1)
        self.weights = channel_weights
        self._mix = Mixture(sketch, scale if scale is not None else channel_weights)
        self._memo: dict[float, tuple[torch.Tensor, Threshold]] = {}

    def __call__(self, sparsity: float) -> tuple[torch.Tensor, torch.Tensor | None, Threshold]:
        """(threshold tensor float32, scale or None, calibration facts) for `sparsity`."""
        s = check_sparsity(sparsity)
        if s not in self._memo:
            res = solve_threshold(self._mix, s)
            if self.weights is not None:       # CHESS channel-wise: t_i = tau / mu_i
                t = channel_thresholds(res.value, self.weights)
            else:
                t = torch.tensor(res.value, dtype=torch.float32)
            self._memo[s] = (t, res)
        t, res = self._memo[s]
        return t.clone(), None if self.scale is None else self.scale.clone(), res


def site_thresholds(model: nn.Module, plan: Plan, sketches: dict[str, ActivationSketch], *,
                    norms: dict[str, torch.Tensor] | None = None) -> dict[str, SiteThresholds]:
    """One `SiteThresholds` per site of `plan`, weighed by its method (`ActivationMethod.weigh`;
    WINA's column norms come from the model's current weights unless given in `norms`)."""
    weigh = ACTIVATION_METHODS.get_entry(plan.method).weigh
    out = {}
    for site in plan.sites:
        if site.point not in sketches:
            raise UsageError(f"no activation statistics for {site.point}: calibrate again with activation "
                             "statistics (the statistics file predates them or is for another model)")
        sketch = sketches[site.point]
        scale, weights = (None, None) if weigh is None else weigh(model, site, sketches, norms)
        out[site.name] = SiteThresholds(site, sketch, scale=scale, channel_weights=weights)
    return out


def compute_thresholds(model: nn.Module, plan: Plan, sketches: dict[str, ActivationSketch],
                       sparsity: float | dict[str, float], *, norms: dict[str, torch.Tensor] | None = None,
                       calibrations: dict[str, SiteThresholds] | None = None,
                       ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Tensors and per-site recipe entries for `sparsity` (one target for every site, or a
    per-site dict such as the greedy allocation)."""
    cal = calibrations or site_thresholds(model, plan, sketches, norms=norms)
    tensors: dict[str, torch.Tensor] = {}
    sites: dict[str, dict] = {}
    for site in plan.sites:
        site_tensors, sites[site.name] = site_result(site, cal[site.name], sparsity)
        tensors.update(site_tensors)
    return tensors, sites


def site_result(site: Site, calibration: SiteThresholds, sparsity: float | dict[str, float]
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """One site's tensors (``<name>.threshold`` and, with importance weights, ``<name>.scale``) and
    its recipe entry, at `sparsity` (one target, or per site)."""
    s = sparsity[site.name] if isinstance(sparsity, dict) else sparsity
    t, scale, res = calibration(s)
    tensors = {f"{site.name}.threshold": t, **({f"{site.name}.scale": scale} if scale is not None else {})}
    entry = {"where": site.where, "role": site.role, "sparsity": round(float(s), 6),
             "calibrated": round(res.predicted, 6), "bounds": [round(res.lower, 6), round(res.upper, 6)]}
    return tensors, entry


def activation_section(plan: Plan, sites: dict[str, dict], *, target: float, allocation: str = "uniform",
                       mode: str = "all", calibration: dict | None = None) -> dict:
    """The ``activation`` section of sparsekit.json (the file keys are added by `sparsekit.files.thresholds.activation_file`)."""
    return {"method": plan.method, "target": float(target), "allocation": allocation, "mode": mode,
            "calibration": dict(calibration or {}), "sites": sites}

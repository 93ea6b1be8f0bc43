"""Calibrate activation thresholds inside a model, so that the sparsity measured with every site
active equals the target on the calibration data.

Thresholds computed from dense activations drift once several sites are active: masking q/k/v
changes the attention output, so o_proj's measured sparsity moves away from its target (tiny
random Llama: +8 to +17 points at 50-65%; Gemma-3-270M at 50%: o_proj 39%, down_proj 52%).
Staged calibration removes this: sites are calibrated in forward order, stage by stage (q/k/v
inputs, o input, gate/up inputs or CHESS's activation, down input), each stage on activations
computed with every earlier stage (and every earlier layer) already sparsified. Cost: one run
of the block per stage (3 or 4).

``run`` is any callable that runs the calibration data through the sites being calibrated: a
full model forward over the calibration batches, or the sequential engine's forward of one
decoder layer over its cached inputs (which then returns the layer output, for the greedy
search). Wrappers stay installed (mode "all") with the calibrated thresholds when these
functions return, so the engine's recompute of the layer outputs feeds the next layer sparse
activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparsekit.activation.allocation import Allocation, allocate_block
from sparsekit.activation.collect import SketchCollector
from sparsekit.activation.plan import ROLES, Plan, Site
from sparsekit.activation.sites import SiteThresholds, site_result, site_thresholds
from sparsekit.anatomy import set_submodule
from sparsekit.runtime.act_sparse import ActSparse

__all__ = ["STAGES", "calibrate_sites", "greedy_block_sparsities", "install_sites"]

STAGES = ROLES   # calibrated in this order within a block


def install_sites(model: nn.Module, sites: list[Site], enabled: bool = False) -> dict:
    """Wrap every site (threshold 0, mode "all"), or reuse its wrapper; returns name -> wrapper."""
    out = {}
    for site in sites:
        m = model.get_submodule(site.name)
        if not isinstance(m, ActSparse):
            m = ActSparse(m, 0.0, where=site.where, mode="all")
            set_submodule(model, site.name, m)
        m.mode = "all"
        m.enabled = enabled
        out[site.name] = m
    return out


def _stages(sites: list[Site]) -> list[list[Site]]:
    by = {}
    for s in sites:
        by.setdefault((s.layer, STAGES.index(s.role)), []).append(s)
    return [by[k] for k in sorted(by)]


def calibrate_sites(model: nn.Module, plan: Plan, run: Callable[[], object], sparsity: float | dict[str, float],
                    *, layer: int | None = None, norms: dict[str, torch.Tensor] | None = None, device=None,
                    **grid) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Staged calibration of the sites of `layer` (None: every layer, in order) at `sparsity`
    (one target, or per site). Returns the tensors and per-site recipe entries, as
    `compute_thresholds` does; the wrappers are left installed and enabled."""
    sites = plan.sites if layer is None else plan.layer_sites(layer)
    wrappers = install_sites(model, sites, enabled=False)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for stage in _stages(sites):
        keys = {s.point for s in stage} | {s.mu_point for s in stage if s.mu_point}
        with SketchCollector(model, {k: plan.points[k] for k in keys}, device=device, **grid) as col, \
                torch.no_grad():
            run()
        sub = Plan(plan.method, stage, plan.points, [])
        cal = site_thresholds(model, sub, col.sketches, norms=norms)
        for site in stage:
            site_tensors, entries[site.name] = site_result(site, cal[site.name], sparsity)
            wrappers[site.name].set_threshold(site_tensors[f"{site.name}.threshold"],
                                              site_tensors.get(f"{site.name}.scale"))
            wrappers[site.name].enabled = True
            tensors.update(site_tensors)
    return tensors, entries


def greedy_block_sparsities(model: nn.Module, plan: Plan, layer: int, run_block: Callable[[], torch.Tensor],
                            target: float, *, step: float = 0.05, max_sparsity: float = 1.0,
                            last_fraction: float = 0.25, norms: dict[str, torch.Tensor] | None = None,
                            device=None, **grid) -> Allocation:
    """Greedy per-site sparsities of one block at effective sparsity `target`: sketches of the
    block's points from one dense-block run, then `allocate_block` on ``run_block()`` outputs.
    Follow with `calibrate_sites(..., sparsity=result.sparsities, layer=layer)` so the measured
    sparsities match the allocation."""
    sites = plan.layer_sites(layer)
    wrappers = install_sites(model, sites, enabled=False)
    keys = {s.point for s in sites} | {s.mu_point for s in sites if s.mu_point}
    with SketchCollector(model, {k: plan.points[k] for k in keys}, device=device, **grid) as col, torch.no_grad():
        run_block()
    sub = Plan(plan.method, sites, plan.points, [])
    cal: dict[str, SiteThresholds] = site_thresholds(model, sub, col.sketches, norms=norms)
    result = allocate_block(wrappers, cal, run_block, target, step=step, max_sparsity=max_sparsity,
                            last_fraction=last_fraction)
    for m in wrappers.values():
        m.enabled = False
    return result

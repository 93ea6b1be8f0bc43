"""Prune a whole model through one seam, per linear layer:

    plan    (an allocator gives each decoder layer, so each of its linears, a target sparsity:
             uniform, OWL, DLP or a user's JSON file)
 -> select  (the method turns weights + statistics into a mask, and updated weights for SparseGPT)
 -> refine  (optional: DSnoT swaps mask entries; a reconstructing method then recomputes its
             weights for the refined mask)
 -> apply   (write weight * ~mask back into the model).

The statistics come either from the sequential engine (each decoder layer calibrated on the
outputs of the already-pruned layers before it) or from a saved `sparsekit calibrate` file. The
mask is a value between select and apply; nothing here knows a method's math (the table in
`methods.py` does) and the engine knows no method.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from sparsekit.calibration.engine import EngineTimes, run_sequential
from sparsekit.calibration.stats import InputStats
from sparsekit.errors import NumericalError, UsageError
from sparsekit.anatomy import decoder_layers
from sparsekit.files.statsfile import SavedStats
from sparsekit.pruning.masks import apply_mask_, wanda_scores
from sparsekit.pruning.plugins import Method, PlanContext, RefineArgs, SelectArgs, Selection
from sparsekit.pruning.updates import UPDATES
from sparsekit.recipe import Recipe, check_against_model


@dataclass
class LayerResult:
    name: str
    target: float
    achieved: float
    seconds: float                 # select + refine + apply
    note: str = ""
    refine_seconds: float = 0.0
    swaps: int | None = None       # DSnoT swaps (None: not refined)


@dataclass
class PruneRun:
    layers: list[LayerResult] = field(default_factory=list)
    times: EngineTimes = field(default_factory=EngineTimes)
    seconds: float = 0.0
    allocation: dict[str, float] | None = None     # decoder layer name -> target sparsity
    layer_values: dict[str, float] | None = None   # OWL outlier ratio / DLP importance per decoder layer
    allocation_seconds: float = 0.0

    @property
    def refine_seconds(self) -> float:
        return sum(r.refine_seconds for r in self.layers)


# --- checks -----------------------------------------------------------------------------------
def check_finite(name: str, what: str, *tensors: torch.Tensor | None) -> None:
    """Stop with a reason when weights or statistics hold NaN or inf (never prune around them)."""
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NumericalError(f"{name}: its {what} contain NaN or inf, so no pruning decision is "
                                 "meaningful: check the checkpoint (and the --dtype; float16 can overflow)")


def _check_stats(name: str, stats: InputStats, hessian: bool) -> None:
    check_finite(name, "input statistics", stats.sq_norm, stats.mean, stats.var,
                 stats.hessian if hessian else None)


# --- plan -------------------------------------------------------------------------------------
def group_by_layer(model: nn.Module, targets: Mapping[str, nn.Module]) -> dict[str, list[str]]:
    """Decoder layer name ('model.layers.3') -> the target linears inside it, in layer order."""
    path, layers = decoder_layers(model)
    groups: dict[str, list[str]] = {}
    pattern = re.compile(re.escape(path) + r"\.(\d+)\.")
    for name in targets:
        match = pattern.match(name)
        if match is None:
            raise UsageError(f"{name} is not inside a decoder layer ({path}.N): only decoder linears are pruned")
        groups.setdefault(f"{path}.{match.group(1)}", []).append(name)
    order = {f"{path}.{i}": i for i in range(len(layers))}
    return dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))


def _wanda_scores(targets: Mapping[str, nn.Module], names: list[str], stats: Mapping[str, InputStats]):
    out = []
    for name in names:
        s = stats[name]
        _check_stats(name, s, hessian=False)
        w = targets[name].weight.detach()
        out.append(wanda_scores(w, s.sq_norm.to(w.device)))
    return out


def plan_sparsity(model: nn.Module, recipe: Recipe, targets: Mapping[str, nn.Module], *,
                  calibration: torch.Tensor | None = None, stats: Mapping[str, InputStats] | None = None,
                  device=None, offload_activations=None, on_layer=None,
                  ) -> tuple[dict[str, float], dict[str, float] | None, EngineTimes]:
    """Target sparsity per decoder layer: (allocation, per-layer values, engine times).

    An allocator that uses scores (OWL, DLP) needs every layer's Wanda scores of the DENSE model
    before any layer is pruned (its normalisation spans all layers): from saved statistics
    directly, otherwise from one dense sequential pass over the calibration windows (the
    references' first pass)."""
    allocator, options = recipe.allocator, recipe.layerwise_options
    groups = group_by_layer(model, targets)
    params = [sum(targets[n].weight.numel() for n in names) for names in groups.values()]
    times = EngineTimes()
    if allocator.from_file is not None:
        values = allocator.from_file(recipe.layerwise, list(groups))
        return dict(zip(groups, values)), None, times
    if allocator.plan is not None:
        if allocator.reads_data and calibration is None and stats is None:
            raise UsageError(f"--layerwise {recipe.layerwise} needs calibration data: give --data or --stats")
        context = PlanContext(model, recipe, targets, groups, params, calibration, stats, device,
                              offload_activations, on_layer)
        sparsities, per_layer = allocator.plan(context, options)
        return dict(zip(groups, sparsities)), None if per_layer is None else dict(zip(groups, per_layer)), times
    if not allocator.uses_scores:
        return {layer: recipe.sparsity for layer in groups}, None, times

    values: dict[str, float] = {}
    if stats is not None:
        if isinstance(stats, SavedStats):  # read a few vectors per linear, not Hessians
            stats = stats.without_hessian()
        for layer, names in groups.items():
            values[layer] = allocator.layer_value(_wanda_scores(targets, names, stats), options)
    else:
        if calibration is None:
            raise UsageError(f"--layerwise {recipe.layerwise} needs calibration data: give --data or --stats")
        path, _ = decoder_layers(model)

        def measure(index: int, linears: dict[str, nn.Linear], layer_stats: dict[str, InputStats]) -> bool:
            values[f"{path}.{index}"] = allocator.layer_value(_wanda_scores(linears, list(linears), layer_stats),
                                                              options)
            return False

        times = run_sequential(model, calibration, dict(targets), measure,
                               batch_size=recipe.calibration.batch_size, device=device,
                               offload_activations=offload_activations, modifies=False, on_layer=on_layer)
    ordered = [values[layer] for layer in groups]
    try:
        sparsities = allocator.spread(ordered, params, recipe.sparsity, options)
    except ValueError as exc:
        raise UsageError(f"--layerwise {recipe.layerwise}: {exc}") from None
    return dict(zip(groups, sparsities)), dict(zip(groups, ordered)), times


def check_allocation_file(model: nn.Module, recipe: Recipe, targets: Mapping[str, nn.Module]) -> None:
    """A --layerwise JSON file that does not name exactly this model's layers fails here, right
    after loading and before any calibration work."""
    if recipe.allocation_file is not None:
        plan_sparsity(model, recipe, targets)


# --- select, refine, apply ---------------------------------------------------------------------
def _refines(recipe: Recipe, name: str) -> bool:
    refiner = recipe.refiner
    return refiner.refine is not None and not (refiner.skips is not None and refiner.skips(recipe.refine_options, name))


def _refine(dense: torch.Tensor, selection: Selection, stats: InputStats, recipe: Recipe, method: Method,
            args: SelectArgs) -> tuple[Selection, int, float]:
    """The refiner on the method's selection: (refined selection, swaps, seconds). When the mask
    changed, a method that updates weights recomputes them for the refined mask with its weight
    update (SparseGPT: the OBS update for exactly that mask), so the kept weights stay consistent
    with what was pruned; otherwise the refined mask replaces the method's."""
    start = time.perf_counter()
    refined = recipe.refiner.refine(dense, selection, stats, RefineArgs(recipe.nm, recipe.refine_options))
    if not torch.equal(refined.mask, selection.mask):
        if recipe.update == "auto" and method.update is not None:
            note = selection.note
            selection = UPDATES[method.update].refit(dense, stats, refined.mask, args)
            selection.note = selection.note or note
        else:  # no update, or a chosen one: it refits for the final mask after refinement
            selection = Selection(refined.mask, selection.weight, selection.note)
    return selection, refined.swaps, time.perf_counter() - start


def _chosen_update(dense: torch.Tensor, selection: Selection, stats: InputStats, recipe: Recipe,
                   sparsity: float) -> Selection:
    """``--update X``: the kept weights of the final mask refitted by X from the dense weights."""
    note = selection.note
    out = recipe.update_entry.refit(dense, stats, selection.mask, SelectArgs(sparsity, recipe.nm, recipe.update_options))
    out.note = "; ".join(n for n in (note, out.note) if n)
    return out


def prune_linear(name: str, lin: nn.Module, recipe: Recipe, stats: InputStats | None, sparsity: float,
                 device: torch.device | None = None) -> LayerResult:
    """select -> refine -> apply for one linear layer, in place."""
    start = time.perf_counter()
    method = recipe.method_entry
    weight = lin.weight.data
    work = weight.to(device) if device is not None and weight.device != device else weight
    check_finite(name, "weights", work)
    if stats is not None:
        _check_stats(name, stats, hessian=recipe.needs_hessian)
    args = SelectArgs(sparsity, recipe.nm, recipe.method_options)
    selection: Selection = method.select(work, stats, args)
    refine_s, swaps = 0.0, None
    if _refines(recipe, name):
        selection, swaps, refine_s = _refine(work, selection, stats, recipe, method, args)
    if recipe.update != "auto":
        selection = _chosen_update(work, selection, stats, recipe, sparsity)
    if selection.weight is not None:
        work.copy_(selection.weight)
    apply_mask_(work, selection.mask)
    if work is not weight:
        weight.copy_(work)
    zeros = int((weight == 0).sum())
    return LayerResult(name, sparsity, zeros / weight.numel(), time.perf_counter() - start, selection.note,
                       refine_s, swaps)


def prune_model(model: nn.Module, recipe: Recipe, targets: dict[str, nn.Module], *,
                calibration: torch.Tensor | None = None, stats: Mapping[str, InputStats] | None = None,
                device: str | torch.device | None = None, offload_activations: bool | None = None,
                on_layer: Callable[[int, int], None] | None = None,
                on_result: Callable[[LayerResult], None] | None = None,
                on_phase: Callable[[str], None] | None = None) -> PruneRun:
    """Prune `targets` of `model` in place according to `recipe`.

    - without statistics (magnitude, no refiner, uniform or file allocation) nothing runs the model;
    - with `stats` (a mapping name -> InputStats, e.g. from `sparsekit calibrate`), each linear is
      pruned from those dense-model statistics, no forward pass;
    - otherwise the sequential engine calibrates on `calibration` token ids [n, T], pruning each
      decoder layer before computing the next layer's inputs (`device` and
      `offload_activations` as in `run_sequential`).
    """
    check_against_model(recipe, targets)
    run = PruneRun()
    start = time.perf_counter()
    dev = torch.device(device) if device is not None else None
    if not recipe.prunes_weights:
        return run
    if on_phase is not None and recipe.layerwise != "uniform":
        on_phase("allocating layer sparsities")
    allocation, values, plan_times = plan_sparsity(model, recipe, targets, calibration=calibration, stats=stats,
                                                   device=dev, offload_activations=offload_activations,
                                                   on_layer=on_layer)
    run.allocation_seconds = time.perf_counter() - start
    run.allocation, run.layer_values = allocation, values
    sparsity_of = {name: allocation[layer] for layer, names in group_by_layer(model, targets).items()
                   for name in names}
    if on_phase is not None:
        on_phase("pruning")

    def record(result: LayerResult) -> None:
        run.layers.append(result)
        if on_result is not None:
            on_result(result)

    needs_stats = recipe.needs_statistics
    if not needs_stats or stats is not None:
        names = list(targets)
        t0 = time.perf_counter()
        for k, name in enumerate(names):
            record(prune_linear(name, targets[name], recipe, stats[name] if needs_stats else None,
                                sparsity_of[name], dev))
            if on_layer is not None:
                on_layer(k, len(names))
        run.times.process = time.perf_counter() - t0
    else:
        if calibration is None:
            raise UsageError(f"--method {recipe.method} needs calibration data: give --data or --stats")

        def callback(index: int, linears: dict[str, nn.Linear], layer_stats: dict[str, InputStats]) -> bool:
            for name, lin in linears.items():
                record(prune_linear(name, lin, recipe, layer_stats[name], sparsity_of[name]))
            return True

        run.times = run_sequential(model, calibration, targets, callback,
                                   batch_size=recipe.calibration.batch_size, device=dev,
                                   offload_activations=offload_activations,
                                   hessian=recipe.needs_hessian, on_layer=on_layer)
    run.times.capture += plan_times.capture
    run.times.forward += plan_times.forward
    run.seconds = time.perf_counter() - start
    return run

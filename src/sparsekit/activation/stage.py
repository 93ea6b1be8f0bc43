"""The activation-sparsity stage of `sparsekit prune`: thresholds for every site of a method, set
on the (already weight-pruned) model.

- From calibration windows (the default): the sequential engine runs one decoder layer at a time
  on the outputs of the layers before it, with their activation sparsity already active; within
  the layer the sites are calibrated stage by stage in forward order (`calibrate_sites`), after an
  optional greedy per-site allocation (`greedy_block_sparsities`). The measured sparsity of each
  site on the calibration data then equals its target.
- From a statistics file (`sparsekit calibrate --activations`): the dense model's sketches, with
  no forward pass (`compute_thresholds`); thresholds from dense activations drift somewhat once
  several sites are active (see `calibrate.py`).

The model is left without wrappers; the thresholds are returned for the output directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from sparsekit.activation.calibrate import calibrate_sites, greedy_block_sparsities
from sparsekit.activation.plan import plan_activation
from sparsekit.activation.sites import activation_section, compute_thresholds
from sparsekit.calibration.engine import EngineTimes, run_sequential
from sparsekit.anatomy import prunable_linears
from sparsekit.errors import UsageError
from sparsekit.runtime.act_sparse import remove_activation_sparsity


@dataclass
class ActivationResult:
    tensors: dict[str, torch.Tensor]     # "<module>.threshold" / "<module>.scale", float32
    section: dict                        # the `activation` section of sparsekit.json (without file keys)
    times: EngineTimes = field(default_factory=EngineTimes)
    seconds: float = 0.0


def calibrate_activation(model: nn.Module, recipe, *, calibration: torch.Tensor | None = None,
                         sketches: dict | None = None, calibration_doc: dict | None = None, device=None,
                         offload_activations=None, on_layer: Callable[[int, int], None] | None = None
                         ) -> ActivationResult:
    """Thresholds for `recipe.activation` at `recipe.act_sparsity` (see the module docstring)."""
    start = time.perf_counter()
    plan = plan_activation(model, recipe.activation)
    if not plan.sites:
        raise UsageError(f"--activation {recipe.activation}: no linear of {type(model).__name__} is a site "
                         "it sparsifies (unknown layer names)")
    times = EngineTimes()
    if sketches is not None:
        tensors, entries = compute_thresholds(model, plan, sketches, recipe.act_sparsity)
    else:
        if calibration is None:
            raise UsageError("--activation needs calibration data: give --data or --stats")
        tensors, entries = {}, {}

        def per_layer(index: int, linears, stats, run_layer) -> bool:
            if not plan.layer_sites(index):
                return False
            sparsity = recipe.act_sparsity
            if recipe.act_allocation == "greedy":
                sparsity = greedy_block_sparsities(model, plan, index, run_layer, recipe.act_sparsity).sparsities
            t, e = calibrate_sites(model, plan, run_layer, sparsity, layer=index)
            tensors.update({k: v.detach().to("cpu", torch.float32) for k, v in t.items()})
            entries.update(e)
            return True  # recompute the layer's outputs with its sparsity active

        try:
            times = run_sequential(model, calibration, prunable_linears(model), per_layer,
                                   batch_size=recipe.calibration.batch_size, device=device,
                                   offload_activations=offload_activations, collect=False, layer_runner=True,
                                   on_layer=on_layer)
        finally:
            remove_activation_sparsity(model)
    section = activation_section(plan, entries, target=recipe.act_sparsity, allocation=recipe.act_allocation,
                                 mode=recipe.act_mode, calibration=calibration_doc)
    return ActivationResult(tensors, section, times, time.perf_counter() - start)


def by_role(section: dict) -> dict[str, dict]:
    """Per role (attn_in, attn_out, mlp_in, mlp_act, mlp_out): sites, mean target and mean
    calibrated sparsity, for summaries."""
    out: dict[str, dict] = {}
    for entry in section.get("sites", {}).values():
        acc = out.setdefault(entry["role"], {"sites": 0, "target": 0.0, "calibrated": 0.0})
        acc["sites"] += 1
        acc["target"] += entry["sparsity"]
        acc["calibrated"] += entry["calibrated"]
    return {role: {"sites": a["sites"], "target": a["target"] / a["sites"], "calibrated": a["calibrated"] / a["sites"]}
            for role, a in out.items()}

"""Weight updates: the kept weights that minimise a layer's reconstruction error
``||X W^T - X W_hat^T||^2`` for a fixed mask, in the ``UPDATES`` registry.

A method that updates weights (SparseGPT) names its update; when a refiner changes the mask,
the pipeline recomputes the kept weights for the refined mask with it, so they stay consistent
with what was pruned. ``obs`` is SparseGPT's Optimal Brain Surgeon update for a given mask (it
reads the method's blocksize and dampening from `SelectArgs.options`).
"""

from __future__ import annotations

from sparsekit.pruning.methods import SparseGPTOptions, sparsegpt_note
from sparsekit.pruning.plugins import SelectArgs, Selection, Update
from sparsekit.pruning.sparsegpt import sparsegpt_prune
from sparsekit.registry import Registry

__all__ = ["UPDATES"]


def _obs(weight, stats, mask, a: SelectArgs) -> Selection:
    o = a.options if isinstance(a.options, SparseGPTOptions) else SparseGPTOptions()
    result = sparsegpt_prune(weight, stats.hessian, a.sparsity, a.nm, o.blocksize, o.percdamp, mask=mask)
    return Selection(result.mask, result.weight, sparsegpt_note(result))


UPDATES: Registry[Update] = Registry("weight update", "--update", (
    Update("obs", "SparseGPT's OBS update of the kept weights for a fixed mask", needs=frozenset({"hessian"}),
           refit=_obs),
))

"""One linear layer, one method: the pure step from weight (+ statistics) to pruned weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.calibrate.stats import InputStats
from sparsekit.prune.masks import apply_mask_, magnitude_mask, nm_mask, wanda_mask
from sparsekit.prune.sparsegpt import sparsegpt_prune

METHODS = ("magnitude", "wanda", "sparsegpt")
NEEDS_STATS = {"magnitude": False, "wanda": True, "sparsegpt": True}


@dataclass
class PruneSpec:
    method: str
    sparsity: float
    nm: tuple[int, int] | None = None
    per_row: bool = False          # magnitude: one threshold per output row instead of per matrix
    blocksize: int = 128           # sparsegpt
    percdamp: float = 0.01         # sparsegpt

    @property
    def needs_hessian(self) -> bool:
        return self.method == "sparsegpt"


@dataclass
class LinearOutcome:
    zeros: int
    numel: int
    note: str = ""                 # e.g. "dampening raised to 0.1 after a failed Cholesky"


@torch.no_grad()
def prune_weight_(weight: torch.Tensor, spec: PruneSpec, stats: InputStats | None) -> LinearOutcome:
    """Prune `weight` in place according to `spec`."""
    note = ""
    if spec.method == "magnitude":
        mask = nm_mask(weight.abs(), *spec.nm) if spec.nm else magnitude_mask(weight, spec.sparsity, spec.per_row)
        apply_mask_(weight, mask)
    elif spec.method == "wanda":
        apply_mask_(weight, wanda_mask(weight, stats.sq_norm, spec.sparsity, spec.nm))
    elif spec.method == "sparsegpt":
        result = sparsegpt_prune(weight, stats.hessian, spec.sparsity, spec.nm, spec.blocksize, spec.percdamp)
        weight.copy_(result.weight)
        apply_mask_(weight, result.mask)
        if result.retries or result.fallback:
            note = (f"Cholesky failed; dampening raised to {result.damp_used:g}"
                    + (f", fell back to a {result.fallback} inverse" if result.fallback else ""))
    else:
        raise ValueError(f"unknown method {spec.method!r}")
    return LinearOutcome(int((weight == 0).sum().item()), weight.numel(), note)

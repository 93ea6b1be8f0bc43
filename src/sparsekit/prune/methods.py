"""The pruning methods: one record each in one table.

A method turns one linear layer's weight (and its calibration statistics) into a mask (True =
pruned) at a given target sparsity, plus updated weights where it reconstructs (SparseGPT). It
never writes to the model: the pipeline applies the selection. Adding a method is one record
here and its math in its own module; the command line lists the table.

Per method: `needs` names the statistics it reads (`sq_norm`: Wanda's input norms; `hessian`:
SparseGPT's X^T X, collected only when asked for), `supports_nm` whether it can produce N:M
patterns, `select` the step itself and `reconstruct` (optional) how to recompute the kept
weights for a mask that a refiner changed (SparseGPT: the OBS update for that fixed mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sparsekit.calibrate.stats import InputStats
from sparsekit.prune.masks import magnitude_mask, nm_mask, wanda_mask


@dataclass
class Selection:
    """What a method chose for one linear layer."""
    mask: torch.Tensor                     # bool [out, in], True = pruned
    weight: torch.Tensor | None = None     # updated weights (same dtype) when the method reconstructs
    note: str = ""                         # e.g. "dampening raised to 0.1 after a failed Cholesky"


@dataclass(frozen=True)
class SelectArgs:
    """The recipe's per-method options, as a select function sees them."""
    sparsity: float
    nm: tuple[int, int] | None = None
    per_row: bool = False
    blocksize: int = 128
    percdamp: float = 0.01


Select = Callable[[torch.Tensor, "InputStats | None", SelectArgs], Selection]
Reconstruct = Callable[[torch.Tensor, "InputStats", torch.Tensor, SelectArgs], Selection]


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    needs: frozenset[str] = field(default_factory=frozenset)
    supports_nm: bool = True
    select: Select | None = None
    reconstruct: Reconstruct | None = None


def _magnitude(weight, stats, a: SelectArgs) -> Selection:
    if a.nm:
        return Selection(nm_mask(weight.abs(), *a.nm))
    return Selection(magnitude_mask(weight, a.sparsity, a.per_row))


def _wanda(weight, stats, a: SelectArgs) -> Selection:
    return Selection(wanda_mask(weight, stats.sq_norm, a.sparsity, a.nm))


def _sparsegpt_note(result) -> str:
    if not (result.retries or result.fallback):
        return ""
    return (f"Cholesky failed; dampening raised to {result.damp_used:g}"
            + (f", fell back to a {result.fallback} inverse" if result.fallback else ""))


def _sparsegpt(weight, stats, a: SelectArgs) -> Selection:
    from sparsekit.prune.sparsegpt import sparsegpt_prune

    result = sparsegpt_prune(weight, stats.hessian, a.sparsity, a.nm, a.blocksize, a.percdamp)
    return Selection(result.mask, result.weight, _sparsegpt_note(result))


def _sparsegpt_fixed(weight, stats, mask, a: SelectArgs) -> Selection:
    from sparsekit.prune.sparsegpt import sparsegpt_prune

    result = sparsegpt_prune(weight, stats.hessian, a.sparsity, a.nm, a.blocksize, a.percdamp, mask=mask)
    return Selection(result.mask, result.weight, _sparsegpt_note(result))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("magnitude", "|W| with one threshold per matrix (--per-row: per output row); no data",
           select=_magnitude),
    Method("wanda", "|W| x input norm, exactly the same count pruned in every output row",
           needs=frozenset({"sq_norm"}), select=_wanda),
    Method("sparsegpt", "masks from the inverse Hessian with OBS weight updates",
           needs=frozenset({"hessian"}), select=_sparsegpt, reconstruct=_sparsegpt_fixed),
    Method("none", "no weight pruning (activation sparsity only)", supports_nm=False),
)}

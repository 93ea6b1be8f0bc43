"""The kinds of weight-pruning plug-ins and the values they exchange with the pipeline.

* `Method` (registry `sparsekit.pruning.methods.METHODS`, ``--method``): one linear's weight and
  statistics -> a `Selection` (mask, and updated weights when it reconstructs).
* `Update` (`sparsekit.pruning.updates.UPDATES`): the kept weights that best reconstruct the
  layer's output for a fixed mask (SparseGPT's OBS update), run when a refiner changed the mask
  of a method that updates weights.
* `Refiner` (`sparsekit.pruning.refiners.REFINERS`, ``--refine``): a selection -> a refined mask
  with the same per-row counts and N:M pattern.
* `Allocator` (`sparsekit.pruning.allocators.ALLOCATORS`, ``--layerwise``): a target sparsity per
  decoder layer.

Each entry is a `sparsekit.registry.Plugin` (name, help, options dataclass). The pipeline
(`sparsekit.pruning.pipeline`) knows these types and no particular entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsekit.calibration.stats import InputStats
from sparsekit.registry import Plugin

__all__ = ["Allocator", "Method", "PlanContext", "Refined", "RefineArgs", "Refiner", "SelectArgs", "Selection", "Target", "Update"]


@dataclass
class Selection:
    """What a method chose for one linear layer."""
    mask: torch.Tensor                     # bool [out, in], True = pruned
    weight: torch.Tensor | None = None     # updated weights (same dtype) when the method reconstructs
    note: str = ""                         # e.g. "dampening raised to 0.1 after a failed Cholesky"


@dataclass(frozen=True)
class SelectArgs:
    """What a select (or update) function is asked for: the layer's target sparsity, the N:M
    pattern (or None) and the method's options (its options dataclass, or None)."""
    sparsity: float
    nm: tuple[int, int] | None = None
    options: Any = None


@dataclass(frozen=True)
class Target:
    """The recipe facts an entry's cross-check may need (before any model is loaded)."""
    sparsity: float
    nm: tuple[int, int] | None
    pattern: str


Select = Callable[[torch.Tensor, "InputStats | None", SelectArgs], Selection]
Check = Callable[[Any, Target], None]    # (options, target) -> None, or raises UsageError


@dataclass(frozen=True)
class Method(Plugin):
    needs: frozenset[str] = field(default_factory=frozenset)   # statistics read: "sq_norm", "hessian", ...
    supports_nm: bool = True
    select: Select | None = None       # None: no weight pruning (`none`)
    update: str | None = None          # the `Update` that recomputes kept weights for a changed mask
    check: Check | None = None


Refit = Callable[[torch.Tensor, InputStats, torch.Tensor, SelectArgs], Selection]


@dataclass(frozen=True)
class Update(Plugin):
    """``refit(dense weight, stats, mask, args)``: the Selection for exactly that mask (its kept
    weights). ``args.options`` is the update's own options when it is chosen with ``--update``, the
    method's options when a method names it as its own update."""
    needs: frozenset[str] = field(default_factory=frozenset)
    refit: Refit | None = None
    check: Check | None = None


@dataclass(frozen=True)
class RefineArgs:
    nm: tuple[int, int] | None
    options: Any = None


@dataclass(frozen=True)
class Refined:
    mask: torch.Tensor
    swaps: int


@dataclass(frozen=True)
class Refiner(Plugin):
    needs: frozenset[str] = field(default_factory=frozenset)
    # (dense weight, the method's selection, stats, args) -> refined mask and the swaps made
    refine: Callable[[torch.Tensor, Selection, InputStats, RefineArgs], Refined] | None = None
    # (options, linear name) -> whether this linear is left unrefined
    skips: Callable[[Any, str], bool] | None = None
    check: Check | None = None


@dataclass
class PlanContext:
    """What an allocator that searches (``Allocator.plan``) may use: the model (dense, before any
    pruning), the recipe, the targets by decoder layer and their parameter counts, the calibration
    token ids or saved statistics, where layers run, and a progress callback ``on_layer(i, n)``."""
    model: Any
    recipe: Any
    targets: Mapping[str, Any]
    groups: dict[str, list[str]]       # decoder layer name -> its target linears, in layer order
    params: list[int]                  # target parameters per decoder layer, same order
    calibration: torch.Tensor | None = None
    stats: Mapping[str, Any] | None = None
    device: Any = None
    offload_activations: bool | None = None
    on_layer: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class Allocator(Plugin):
    """``uses_scores``: the layer values come from every layer's dense Wanda scores (one value per
    layer by ``layer_value``, spread into sparsities by ``spread``); ``from_file``: the sparsities
    are read from the path the user gave (``accepts`` recognises such a value); ``plan``: any other
    way, e.g. a search (``plan(context, options) -> (sparsities, per-layer values or None)``, one
    per decoder layer in ``context.groups`` order, parameter-weighted mean the target); none of
    these: every layer gets the target (uniform). ``reads_data``: ``plan`` needs calibration data."""
    uses_scores: bool = False
    layer_value: Callable[[list[torch.Tensor], Any], float] | None = None
    spread: Callable[[Sequence[float], Sequence[int], float, Any], list[float]] | None = None
    value_label: str | None = None     # what the per-layer value is, for summary tables
    accepts: Callable[[str], bool] | None = None
    from_file: Callable[[str, Sequence[str]], list[float]] | None = None
    plan: Callable[["PlanContext", Any], tuple[list[float], "list[float] | None"]] | None = None
    reads_data: bool = False
    check: Callable[[str, Any, Target], None] | None = None   # (the --layerwise value, options, target)

"""Mask refiners (``--refine``), in the ``REFINERS`` registry.

A refiner takes a method's selection and returns a refined mask with the same count per output
row and the same N:M pattern. ``dsnot``: training-free grow/prune swaps per output row that
drive the expected reconstruction error toward zero (`sparsekit.pruning.dsnot`). After a
reconstructing method, DSnoT refines the updated weights with each pruned entry holding its
dense value, against the dense weights as the reference output; the pipeline then recomputes the
method's update for the refined mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sparsekit.pruning.dsnot import dsnot_refine
from sparsekit.pruning.plugins import Refined, RefineArgs, Refiner, Selection
from sparsekit.registry import Registry, at_least, option, regex

__all__ = ["REFINERS", "DSnoTOptions"]


@dataclass(frozen=True)
class DSnoTOptions:
    dsnot_cycles: int = option(50, "--dsnot-cycles", "dsnot: most swaps per output row (default 50).",
                               check=at_least(0))
    dsnot_skip: str | None = option(None, "--dsnot-skip", "dsnot: regex of linears to leave unrefined, e.g. 'mlp' "
                                    "(default: refine all).", check=regex)


def _dsnot(dense: torch.Tensor, selection: Selection, stats, a: RefineArgs) -> Refined:
    dev = dense.device
    updated = selection.weight is not None
    values = torch.where(selection.mask, dense, selection.weight) if updated else dense
    result = dsnot_refine(values, selection.mask, stats.mean.to(dev), stats.var.to(dev), stats.sq_norm.to(dev),
                          nm=a.nm, max_cycles=a.options.dsnot_cycles, reference_weight=dense if updated else None)
    return Refined(result.mask, int(result.num_swaps))


def _dsnot_skips(options: DSnoTOptions, name: str) -> bool:
    return bool(options.dsnot_skip and re.search(options.dsnot_skip, name))


REFINERS: Registry[Refiner] = Registry("refiner", "--refine", (
    Refiner("none", "keep the method's mask"),
    Refiner("dsnot", "training-free grow/prune swaps per output row that drive the expected reconstruction "
                     "error toward zero (keeps each row's sparsity and any N:M pattern; after sparsegpt the OBS "
                     "update is recomputed for the refined mask)", DSnoTOptions,
            needs=frozenset({"mean", "var", "sq_norm"}), refine=_dsnot, skips=_dsnot_skips),
), misplaced="{flag} applies to {choice} {owners} only: add {choice} {owners} or drop it")

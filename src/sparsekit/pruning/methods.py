"""Pruning methods (``--method``): one record each, in the ``METHODS`` registry.

A method turns one linear layer's weight (and its calibration statistics) into a `Selection`
(mask, True = pruned; updated weights where it reconstructs) at a target sparsity. It never
writes to the model: the pipeline applies the selection. Per method: ``needs`` names the
statistics it reads (``sq_norm``: Wanda's input norms; ``hessian``: SparseGPT's X^T X, collected
only when asked for), ``supports_nm`` whether it can produce N:M patterns, ``select`` the step
itself, ``update`` the weight update (`sparsekit.pruning.updates`) that recomputes its kept
weights when a refiner changes the mask, and ``options`` its own options (flags, help, checks).

Adding a method: its module (an options dataclass, the select function, a `Method` record) and
one line in the tuple below, or ``METHODS.register(record)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsekit.errors import UsageError
from sparsekit.pruning.masks import magnitude_mask, nm_mask, wanda_mask
from sparsekit.pruning.plugins import Method, SelectArgs, Selection, Target
from sparsekit.pruning.sparsegpt import sparsegpt_prune
from sparsekit.registry import Registry, at_least, finite_positive, option

__all__ = ["METHODS", "MagnitudeOptions", "SparseGPTOptions", "sparsegpt_note"]


@dataclass(frozen=True)
class MagnitudeOptions:
    per_row: bool = option(False, "--per-row", "magnitude: one threshold per output row instead of per matrix.")


def _magnitude(weight, stats, a: SelectArgs) -> Selection:
    if a.nm:
        return Selection(nm_mask(weight.abs(), *a.nm))
    return Selection(magnitude_mask(weight, a.sparsity, a.options.per_row))


def _wanda(weight, stats, a: SelectArgs) -> Selection:
    return Selection(wanda_mask(weight, stats.sq_norm, a.sparsity, a.nm))


@dataclass(frozen=True)
class SparseGPTOptions:
    blocksize: int = option(128, "--blocksize", "sparsegpt: columns per OBS block (default 128).",
                            check=at_least(1))
    percdamp: float = option(0.01, "--percdamp", "sparsegpt: Hessian dampening, as a fraction of its mean diagonal "
                             "(default 0.01; raised automatically if the Cholesky factorisation fails).",
                             check=finite_positive("a positive fraction of the mean Hessian diagonal"))


def sparsegpt_note(result) -> str:
    """What a SparseGPT solve had to do to succeed (empty when nothing)."""
    if not (result.retries or result.fallback):
        return ""
    return (f"Cholesky failed; dampening raised to {result.damp_used:g}"
            + (f", fell back to a {result.fallback} inverse" if result.fallback else ""))


def _sparsegpt(weight, stats, a: SelectArgs) -> Selection:
    o = a.options or SparseGPTOptions()
    result = sparsegpt_prune(weight, stats.hessian, a.sparsity, a.nm, o.blocksize, o.percdamp)
    return Selection(result.mask, result.weight, sparsegpt_note(result))


def _check_sparsegpt(options: SparseGPTOptions, target: Target) -> None:
    if target.nm is not None and options.blocksize % target.nm[1]:
        raise UsageError(f"--blocksize {options.blocksize} must be a multiple of M={target.nm[1]} for "
                         f"--pattern {target.pattern}")


METHODS: Registry[Method] = Registry("pruning method", "--method", (
    Method("magnitude", "|W|, no data", MagnitudeOptions, select=_magnitude),
    Method("wanda", "|W| x input norm, per output row", needs=frozenset({"sq_norm"}), select=_wanda),
    Method("sparsegpt", "Hessian-based masks with weight updates", SparseGPTOptions,
           needs=frozenset({"hessian"}), select=_sparsegpt, update="obs", check=_check_sparsegpt),
    Method("none", "no weight pruning", supports_nm=False),
))

"""Layer allocators (``--layerwise``): a target sparsity per decoder layer, in the ``ALLOCATORS``
registry. Every linear of a decoder layer gets its layer's sparsity; the parameter-weighted mean
stays the target.

* ``uniform``: the target everywhere.
* ``owl`` / ``dlp``: from every layer's Wanda scores of the dense model
  (`sparsekit.pruning.allocation`: OWL prunes layers with more outlier scores less, DLP prunes
  layers with larger mean scores more).
* a ``.json`` file: the sparsities the file gives (`sparsekit.files.allocation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sparsekit.errors import UsageError
from sparsekit.files.allocation import load_allocation_file
from sparsekit.pruning.allocation import allocate, dlp_importance, owl_outlier_ratio
from sparsekit.pruning.plugins import Allocator, Target
from sparsekit.registry import Registry, all_of, finite_positive, option

__all__ = ["ALLOCATORS", "AllocatorRegistry", "DLPOptions", "OWLOptions"]


def _spread_below_half(flag: str, value: float) -> None:
    if value >= 0.5:
        raise UsageError(f"{flag} {value} spreads layer sparsities by +-{value:g}: use a value below 0.5")


@dataclass(frozen=True)
class OWLOptions:
    owl_m: float = option(5.0, "--owl-m", "owl: a score is an outlier above M times its layer's mean score "
                          "(default 5).", check=finite_positive())
    owl_lambda: float = option(0.08, "--owl-lambda", "owl: layer sparsities span target +- lambda (default 0.08).",
                               check=all_of(finite_positive(), _spread_below_half))


@dataclass(frozen=True)
class DLPOptions:
    dlp_alpha: float = option(0.15, "--dlp-alpha", "dlp: layer sparsities span target +- alpha (default 0.15).",
                              check=all_of(finite_positive(), _spread_below_half))


def _varies(value: str, options, target: Target) -> None:
    if target.nm is not None:
        raise UsageError(f"--layerwise {value} varies the sparsity per layer, which an N:M pattern fixes to "
                         f"{target.sparsity:g}: use --pattern unstructured, or --layerwise uniform")


def _file_check(path: str) -> None:
    if not Path(path).is_file():
        raise UsageError(f"--layerwise {path}: no such file: give a JSON file mapping decoder layer names to "
                         "sparsities")


class AllocatorRegistry(Registry[Allocator]):
    """Allocators are picked by name, or by a value an entry accepts (a ``.json`` path)."""

    def resolve(self, value: str) -> Allocator:
        if value in self:
            return self[value]
        for entry in self.values():
            if entry.accepts is not None and entry.accepts(value):
                return entry
        takes = [e.help for e in self.values() if e.accepts is not None]
        names = ", ".join(n for n, e in self.items() if e.accepts is None)
        raise UsageError(f"unknown --layerwise {value!r}: use one of {names}" + "".join(f", or {t}" for t in takes))

    def check_value(self, value: str, target: Target, options) -> Allocator:
        """The allocator for ``value``, checked against the recipe before anything loads."""
        entry = self.resolve(value)
        if entry.accepts is not None:
            _file_check(value)
        if entry.check is not None:
            entry.check(value, options, target)
        return entry

    def make_for(self, value: str, given: Mapping):
        return self.make_options(self.resolve(value).name, given)


ALLOCATORS = AllocatorRegistry("layer allocator", "--layerwise", (
    Allocator("uniform", "every layer at --sparsity"),
    Allocator("owl", "layers with more outlier Wanda scores pruned less", OWLOptions, uses_scores=True,
              layer_value=lambda scores, o: owl_outlier_ratio(scores, m=o.owl_m),
              spread=lambda values, params, target, o: allocate("owl", values, params, target, lam=o.owl_lambda),
              value_label="outlier ratio", check=_varies),
    Allocator("dlp", "layers with larger mean Wanda scores pruned more", DLPOptions, uses_scores=True,
              layer_value=lambda scores, o: dlp_importance(scores),
              spread=lambda values, params, target, o: allocate("dlp", values, params, target, alpha=o.dlp_alpha),
              value_label="mean Wanda score", check=_varies),
    Allocator("file", "a .json file of per-layer sparsities", accepts=lambda v: v.endswith(".json"),
              from_file=load_allocation_file, check=_varies),
))

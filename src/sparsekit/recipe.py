"""A pruning recipe: every option of `sparsekit prune`, parsed and validated once, before any model
is loaded, into an immutable value.

A recipe is the composition of one choice per kind of plug-in, each with its own options
(`sparsekit.registry`): a pruning method (``--method``, `sparsekit.pruning.methods`), a layer
allocator (``--layerwise``, `sparsekit.pruning.allocators`), a refiner (``--refine``,
`sparsekit.pruning.refiners`), a weight update (``--update``, `sparsekit.pruning.updates`) and an
activation-sparsity method (``--activation``,
`sparsekit.activation.methods`), plus the target (sparsity, N:M pattern), which linears to
prune, the activation stage (target, allocation, mode) and the calibration (`Calibration`).

`make_recipe(...)` takes the options as given on the command line, by name (None = "not given",
so a conflict between an explicit option and another is detectable; every registered plug-in
option is a keyword), and returns a `Recipe`, or raises `UsageError` with one line naming the
problem and the fix. Later stages read the recipe and never re-check the options. What depends
on the model (does N:M divide every layer, does an allocation file name every layer) is checked
by `check_against_model` right after loading, before any calibration work.

`Recipe.to_json()` is the ``recipe`` section of ``sparsekit.json`` (each plug-in's options flat,
after its choice); `recipe_from_json` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsekit.activation.methods import ACTIVATION_METHODS
from sparsekit.data import BOS_MODES
from sparsekit.data import SAMPLING as SAMPLINGS
from sparsekit.errors import UsageError
from sparsekit.files.statsfile import read_header as read_stats_header
from sparsekit.pruning.allocators import ALLOCATORS
from sparsekit.pruning.masks import parse_pattern
from sparsekit.pruning.methods import METHODS
from sparsekit.pruning.plugins import Target
from sparsekit.pruning.refiners import REFINERS
from sparsekit.pruning.updates import UPDATES
from sparsekit.registry import Registry, regex
from sparsekit.runtime.act_sparse import ACT_MODES

__all__ = ["ACT_ALLOCATIONS", "Calibration", "DEFAULT_SPARSITY", "PLUGIN_REGISTRIES", "Recipe", "check_against_model",
           "check_choice", "check_seqlen", "make_calibration", "make_recipe", "recipe_from_json"]

ACT_ALLOCATIONS = ("uniform", "greedy")
DEFAULT_SPARSITY = 0.5
DEFAULT_ACT_SPARSITY = 0.5
# Every registry whose entries' options are recipe keywords (and CLI options), in recipe order.
PLUGIN_REGISTRIES: tuple[Registry, ...] = (METHODS, ALLOCATORS, REFINERS, UPDATES, ACTIVATION_METHODS)


@dataclass(frozen=True)
class Calibration:
    """Where calibration statistics come from: text windows run through the model, or a file."""
    data: str = "c4"
    nsamples: int = 128
    seqlen: int | None = None          # None: min(model context, 2048), resolved after loading
    seed: int = 0
    sampling: str = "random"
    bos: str = "auto"
    batch_size: int = 8
    stats: str | None = None           # a `sparsekit calibrate` file instead of running the model
    given: frozenset[str] = field(default=frozenset(), compare=False)   # the options given explicitly

    @property
    def default_data(self) -> bool:
        """Whether the data is the default (c4) rather than a source the user chose."""
        return "data" not in self.given

    def to_json(self) -> dict:
        return {"data": self.data, "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed,
                "sampling": self.sampling, "bos": self.bos, "batch_size": self.batch_size, "stats": self.stats}


@dataclass(frozen=True)
class Recipe:
    method: str = "wanda"
    sparsity: float = DEFAULT_SPARSITY
    nm: tuple[int, int] | None = None
    method_options: Any = None         # the method's options dataclass (None if it has none)
    layerwise: str = "uniform"         # an allocator's name, or the path of a JSON allocation
    layerwise_options: Any = None
    refine: str = "none"
    refine_options: Any = None
    update: str = "auto"               # auto (the method's own), or a weight update that refits the kept weights
    update_options: Any = None
    targets: str | None = None
    ignore: str | None = None
    activation: str = "none"           # none, or an activation method's name
    act_sparsity: float = DEFAULT_ACT_SPARSITY
    act_allocation: str = "uniform"    # uniform | greedy
    act_mode: str = "all"              # all tokens, or decode tokens only (prefill dense)
    activation_options: Any = None
    calibration: Calibration = field(default_factory=Calibration)

    # -- the plug-ins chosen
    @property
    def method_entry(self):
        return METHODS[self.method]

    @property
    def allocator(self):
        return ALLOCATORS.resolve(self.layerwise)

    @property
    def refiner(self):
        return REFINERS[self.refine]

    @property
    def update_entry(self):
        """The weight update that sets the kept weights (None: the method's selection as it is)."""
        name = self.method_entry.update if self.update == "auto" else self.update
        return None if name is None else UPDATES[name]

    @property
    def pattern(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "unstructured"

    @property
    def prunes_weights(self) -> bool:
        return self.method_entry.select is not None

    @property
    def needs_hessian(self) -> bool:
        return "hessian" in self.method_entry.needs or (self.update != "auto" and "hessian" in self.update_entry.needs)

    @property
    def allocation_file(self) -> str | None:
        return self.layerwise if self.allocator.from_file is not None else None

    @property
    def needs_statistics(self) -> bool:
        """Whether any stage reads calibration statistics (so data or --stats is needed)."""
        return bool(self.statistics_readers)

    @property
    def statistics_readers(self) -> list[str]:
        """The options whose stages read calibration statistics, e.g. ["--method wanda", "--refine dsnot"]."""
        return [f"{flag} {value}" for flag, value, reads in (
            ("--method", self.method, bool(self.method_entry.needs)),
            ("--layerwise", self.layerwise, self.allocator.uses_scores or self.allocator.reads_data),
            ("--refine", self.refine, self.refiner.refine is not None),
            ("--update", self.update, self.update != "auto" and bool(self.update_entry.needs)),
            ("--activation", self.activation, self.activation != "none")) if reads]

    def to_json(self) -> dict:
        """The recipe as recorded in sparsekit.json (plain JSON types): each choice followed by its
        options, then the pattern and the calibration (only ``stats`` when none is read)."""
        doc: dict = {"method": self.method, "sparsity": self.sparsity, **Registry.options_json(self.method_options),
                     "layerwise": self.layerwise, **Registry.options_json(self.layerwise_options),
                     "refine": self.refine, **Registry.options_json(self.refine_options),
                     **({"update": self.update, **Registry.options_json(self.update_options)}
                        if self.update != "auto" else {}),
                     "targets": self.targets, "ignore": self.ignore, "activation": self.activation}
        if self.activation != "none":
            doc.update(act_sparsity=self.act_sparsity, act_allocation=self.act_allocation, act_mode=self.act_mode,
                       **Registry.options_json(self.activation_options))
        doc["pattern"] = self.pattern
        doc["calibration"] = self.calibration.to_json() if self.needs_statistics else {"stats": None}
        return doc


def _positive(option: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")


def check_seqlen(seqlen: int | None) -> None:
    """--seqlen: None (model default) or at least 2 tokens (one is never predicted)."""
    if seqlen is not None and seqlen < 2:
        raise UsageError(f"--seqlen must be at least 2 (a window's first token is never predicted), got {seqlen}")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {option} {value!r}: use one of {', '.join(choices)}")


def check_fraction(option: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise UsageError(f"{option} {value} is outside [0, 1): give a fraction such as 0.5")


def make_calibration(*, data: str | None = None, nsamples: int | None = None, seqlen: int | None = None,
                     seed: int | None = None, sampling: str | None = None, bos: str = "auto",
                     batch_size: int = 8, stats: str | None = None) -> Calibration:
    """Validate the calibration options (shared by `calibrate` and `prune`)."""
    check_choice("--bos", bos, BOS_MODES)
    _positive("--batch-size", batch_size)
    _positive("--nsamples", nsamples)
    check_seqlen(seqlen)
    if sampling is not None:
        check_choice("--sampling", sampling, SAMPLINGS)
    if stats is not None:
        given = [f"--{name}" for name, v in (("data", data), ("nsamples", nsamples), ("seqlen", seqlen),
                                             ("seed", seed), ("sampling", sampling)) if v is not None]
        if given:
            raise UsageError(f"--stats reuses the calibration stored in {stats}, so {', '.join(given)} "
                             "would be ignored: drop them, or drop --stats to calibrate anew")
        if not Path(stats).is_file():
            raise UsageError(f"--stats {stats}: no such file: make one with `sparsekit calibrate MODEL -o {stats}`")
    defaults = Calibration()
    given = frozenset(name for name, v in (("data", data), ("nsamples", nsamples), ("seqlen", seqlen),
                                           ("seed", seed), ("sampling", sampling), ("stats", stats)) if v is not None)
    return Calibration(data=defaults.data if data is None else data,
                       nsamples=defaults.nsamples if nsamples is None else nsamples,
                       seqlen=seqlen, seed=defaults.seed if seed is None else seed,
                       sampling=defaults.sampling if sampling is None else sampling,
                       bos=bos, batch_size=batch_size, stats=stats, given=given)


def plugin_option_names() -> set[str]:
    """Every keyword `make_recipe` takes for a plug-in's options."""
    return {name for registry in PLUGIN_REGISTRIES for name in registry.option_specs()}


def make_recipe(*, method: str = "wanda", sparsity: float | None = None, pattern: str = "unstructured",
                layerwise: str = "uniform", refine: str = "none", update: str = "auto", targets: str | None = None,
                ignore: str | None = None, activation: str = "none", act_sparsity: float | None = None,
                act_allocation: str | None = None, act_mode: str | None = None,
                calibration: Calibration | None = None, **options) -> Recipe:
    """Parse and validate a pruning request; raises UsageError (one line) on any inconsistency.

    ``options``: the plug-ins' own options by field name (``blocksize=64``, ``owl_lambda=0.1``,
    ``dsnot_cycles=20``, ...); None (or False for a switch) means "not given". An option of a
    plug-in that is not chosen is refused; an unknown keyword is a TypeError (a programming
    error, not user input)."""
    unknown = sorted(set(options) - plugin_option_names())
    if unknown:
        raise TypeError(f"make_recipe() got unexpected keyword argument(s): {', '.join(unknown)}")
    calibration = calibration or Calibration()
    entry = METHODS.get_entry(method)
    try:
        nm = parse_pattern(pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if entry.select is None:
        if nm is not None:
            raise UsageError(f"--pattern needs weight pruning: give a --method other than {method}")
        if refine != "none" or layerwise != "uniform":
            raise UsageError(f"--refine and --layerwise change weight pruning: give a --method other than {method}")
    check_fraction("--sparsity", sparsity)
    if nm is not None:
        n, m = nm
        if sparsity is not None and abs(sparsity - n / m) > 1e-9:
            raise UsageError(f"pattern {n}:{m} prunes exactly {n}/{m} = {n / m:g} of the weights but "
                             f"--sparsity is {sparsity:g}: use --sparsity {n / m:g} (or leave it out)")
        sparsity = n / m
        if not entry.supports_nm:
            raise UsageError(f"--method {method} does not support N:M patterns: use --pattern unstructured")
    sparsity = DEFAULT_SPARSITY if sparsity is None else sparsity
    target = Target(sparsity, nm, pattern if nm is None else f"{nm[0]}:{nm[1]}")

    method_options = METHODS.make_options(method, options)
    if entry.check is not None:
        entry.check(method_options, target)
    layerwise_options = ALLOCATORS.make_for(layerwise, options)
    ALLOCATORS.check_value(layerwise, target, layerwise_options)
    refiner = REFINERS.get_entry(refine)
    refine_options = REFINERS.make_options(refine, options)
    if refiner.check is not None:
        refiner.check(refine_options, target)
    update_options = None
    if update == "auto":
        given = [UPDATES.option_specs()[k].flag for k in UPDATES.option_specs() if options.get(k) not in (None, False)]
        if given:
            raise UsageError(f"{given[0]} applies to a weight update: add --update "
                             f"{'|'.join(UPDATES)} or drop it")
    else:
        if update not in UPDATES:
            raise UsageError(f"unknown --update {update!r}: use one of auto, {', '.join(UPDATES)}")
        if entry.select is None:
            raise UsageError(f"--update refits pruned weights: give a --method other than {method}")
        update_entry = UPDATES[update]
        update_options = UPDATES.make_options(update, options)
        if update_entry.check is not None:
            update_entry.check(update_options, target)
    for option, value in (("--targets", targets), ("--ignore", ignore)):
        if value is not None:
            regex(option, value)

    if activation == "none":
        for option, value in (("--act-sparsity", act_sparsity), ("--act-allocation", act_allocation),
                              ("--act-mode", act_mode)):
            if value is not None:
                raise UsageError(f"{option} applies to activation sparsity: add --activation "
                                 f"{'|'.join(ACTIVATION_METHODS)} or drop it")
        given = [ACTIVATION_METHODS.option_specs()[k].flag for k in ACTIVATION_METHODS.option_specs()
                 if options.get(k) not in (None, False)]
        if given:
            raise UsageError(f"{given[0]} applies to activation sparsity: add --activation "
                             f"{'|'.join(ACTIVATION_METHODS)} or drop it")
        if entry.select is None:
            raise UsageError(f"--method {method} --activation none leaves the model as it is: give a pruning "
                             "--method or an --activation method")
        activation_options = None
    else:
        if activation not in ACTIVATION_METHODS:
            raise UsageError(f"unknown --activation {activation!r}: use one of none, {', '.join(ACTIVATION_METHODS)}")
        activation_options = ACTIVATION_METHODS.make_options(activation, options)
    check_fraction("--act-sparsity", act_sparsity)
    if act_allocation is not None:
        check_choice("--act-allocation", act_allocation, ACT_ALLOCATIONS)
    if act_mode is not None:
        check_choice("--act-mode", act_mode, ACT_MODES)
    if act_allocation == "greedy" and calibration.stats is not None:
        raise UsageError("--act-allocation greedy runs each decoder layer on calibration windows, which --stats "
                         "does not hold: drop --stats (and give --data), or use --act-allocation uniform")

    recipe = Recipe(method=method, sparsity=sparsity, nm=nm, method_options=method_options, layerwise=layerwise,
                    layerwise_options=layerwise_options, refine=refine, refine_options=refine_options,
                    update=update, update_options=update_options,
                    targets=targets, ignore=ignore, activation=activation,
                    act_sparsity=DEFAULT_ACT_SPARSITY if act_sparsity is None else act_sparsity,
                    act_allocation=act_allocation or "uniform", act_mode=act_mode or "all",
                    activation_options=activation_options, calibration=calibration)
    if calibration.stats is not None and not recipe.needs_statistics:
        raise UsageError(f"--method {method} uses no calibration statistics, so --stats would be ignored: drop it")
    if calibration.stats is not None:
        read_stats_header(calibration.stats)  # a damaged or foreign file is refused here, before anything loads
    ignored = [f"--{name}" for name in ("data", "nsamples", "seqlen", "seed", "sampling") if name in calibration.given]
    if ignored and not recipe.needs_statistics:
        raise UsageError(f"--method {method} uses no calibration data, so {', '.join(ignored)} would be ignored: "
                         f"drop {'it' if len(ignored) == 1 else 'them'} (or add a stage that reads data, e.g. "
                         "--refine dsnot)")
    return recipe


def recipe_from_json(doc: dict) -> Recipe:
    """The `Recipe` a ``recipe`` section of sparsekit.json records (validated like the command
    line; a calibration that read no statistics comes back as the default calibration)."""
    keys = plugin_option_names()
    cal = doc.get("calibration") or {}
    calibration = Calibration(**{k: v for k, v in cal.items() if k in Calibration.__dataclass_fields__}) \
        if set(cal) - {"stats"} else Calibration(stats=cal.get("stats"))
    pattern = doc.get("pattern", "unstructured")
    return make_recipe(method=doc["method"], sparsity=None if pattern != "unstructured" else doc.get("sparsity"),
                       pattern=pattern, layerwise=doc.get("layerwise", "uniform"), refine=doc.get("refine", "none"),
                       update=doc.get("update", "auto"),
                       targets=doc.get("targets"), ignore=doc.get("ignore"), activation=doc.get("activation", "none"),
                       act_sparsity=doc.get("act_sparsity"), act_allocation=doc.get("act_allocation"),
                       act_mode=doc.get("act_mode"), calibration=calibration,
                       **{k: v for k, v in doc.items() if k in keys})


def check_against_model(recipe: Recipe, targets: dict) -> None:
    """Checks that need the model's layers (after loading, before any calibration work)."""
    if not targets:
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    if recipe.nm is not None:
        n, m = recipe.nm
        bad = [(name, lin.in_features) for name, lin in targets.items() if lin.in_features % m]
        if bad:
            name, k = bad[0]
            raise UsageError(f"{n}:{m} does not divide layer {name}: its input dimension {k} is not a "
                             f"multiple of {m}; exclude it with --ignore or pick another pattern")

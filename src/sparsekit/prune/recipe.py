"""A pruning recipe: every option of `sparsekit prune`, parsed and validated once, before any model
is loaded, into an immutable value.

`make_recipe(...)` takes the options as given on the command line (None = "not given", so a
conflict between an explicit option and another is detectable) and returns a `Recipe`, or raises
`UsageError` with one line naming the problem and the fix. Later stages read the recipe and never
re-check the options. What depends on the model (does N:M divide every layer, does an allocation
file name every layer) is checked by `check_against_model` right after loading, before any
calibration work.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsekit.activation.plan import METHODS as ACTIVATION_METHODS
from sparsekit.data import BOS_MODES
from sparsekit.data import SAMPLING as SAMPLINGS
from sparsekit.errors import UsageError
from sparsekit.prune.masks import parse_pattern
from sparsekit.prune.methods import METHODS
from sparsekit.runtime.act_sparse import ACT_MODES

LAYERWISE = ("uniform", "owl", "dlp")
REFINERS = ("none", "dsnot")
ACTIVATIONS = ("none", *ACTIVATION_METHODS)
ACT_ALLOCATIONS = ("uniform", "greedy")
DEFAULT_SPARSITY = 0.5


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


@dataclass(frozen=True)
class Recipe:
    method: str = "wanda"
    sparsity: float = DEFAULT_SPARSITY
    nm: tuple[int, int] | None = None
    per_row: bool = False              # magnitude
    blocksize: int = 128               # sparsegpt
    percdamp: float = 0.01             # sparsegpt
    layerwise: str = "uniform"         # uniform | owl | dlp | path to a JSON allocation
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    dlp_alpha: float = 0.15
    refine: str = "none"               # none | dsnot
    dsnot_cycles: int = 50
    dsnot_skip: str | None = None
    targets: str | None = None
    ignore: str | None = None
    activation: str = "none"           # none | teal | chess | wina
    act_sparsity: float = 0.5
    act_allocation: str = "uniform"    # uniform | greedy
    act_mode: str = "all"              # all tokens, or decode tokens only (prefill dense)
    calibration: Calibration = field(default_factory=Calibration)

    @property
    def pattern(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "unstructured"

    @property
    def prunes_weights(self) -> bool:
        return self.method != "none"

    @property
    def needs_hessian(self) -> bool:
        return "hessian" in METHODS[self.method].needs

    @property
    def allocation_file(self) -> str | None:
        return None if self.layerwise in LAYERWISE else self.layerwise

    @property
    def needs_statistics(self) -> bool:
        """Whether any stage reads calibration statistics (so data or --stats is needed)."""
        return (bool(METHODS[self.method].needs) or self.refine != "none"
                or self.layerwise in ("owl", "dlp") or self.activation != "none")

    def to_json(self) -> dict:
        """The recipe as recorded in sparsekit.json (plain JSON types)."""
        doc = asdict(self)
        doc["pattern"] = self.pattern
        del doc["nm"]
        cal = doc.pop("calibration")
        if not self.needs_statistics:
            cal = {"stats": None}
        doc["calibration"] = cal
        if self.method != "magnitude":
            doc.pop("per_row")
        if self.method != "sparsegpt":
            doc.pop("blocksize")
            doc.pop("percdamp")
        if self.layerwise != "owl":
            doc.pop("owl_m")
            doc.pop("owl_lambda")
        if self.layerwise != "dlp":
            doc.pop("dlp_alpha")
        if self.refine != "dsnot":
            doc.pop("dsnot_cycles")
            doc.pop("dsnot_skip")
        if self.activation == "none":
            for key in ("act_sparsity", "act_allocation", "act_mode"):
                doc.pop(key)
        return doc


def _check_regex(option: str, value: str | None) -> None:
    if value is None:
        return
    try:
        re.compile(value)
    except re.error as exc:
        raise UsageError(f"{option} {value!r} is not a valid regular expression ({exc}): "
                         "fix the pattern, e.g. 'layers\\.0\\.|down_proj'") from None


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
    return Calibration(data=defaults.data if data is None else data,
                       nsamples=defaults.nsamples if nsamples is None else nsamples,
                       seqlen=seqlen, seed=defaults.seed if seed is None else seed,
                       sampling=defaults.sampling if sampling is None else sampling,
                       bos=bos, batch_size=batch_size, stats=stats)


def make_recipe(*, method: str = "wanda", sparsity: float | None = None, pattern: str = "unstructured",
                per_row: bool = False, blocksize: int | None = None, percdamp: float | None = None,
                layerwise: str = "uniform", owl_m: float | None = None, owl_lambda: float | None = None,
                dlp_alpha: float | None = None, refine: str = "none", dsnot_cycles: int | None = None,
                dsnot_skip: str | None = None, targets: str | None = None, ignore: str | None = None,
                activation: str = "none", act_sparsity: float | None = None, act_allocation: str | None = None,
                act_mode: str | None = None, calibration: Calibration | None = None) -> Recipe:
    """Parse and validate a pruning request; raises UsageError (one line) on any inconsistency."""
    defaults = Recipe()
    calibration = calibration or Calibration()
    check_choice("--method", method, tuple(METHODS))
    spec = METHODS[method]
    try:
        nm = parse_pattern(pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if method == "none":
        if nm is not None:
            raise UsageError("--pattern needs weight pruning: give a --method other than none")
        if refine != "none" or layerwise != "uniform":
            raise UsageError("--refine and --layerwise change weight pruning: give a --method other than none")
    if sparsity is not None and not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise UsageError(f"--sparsity {sparsity} is outside [0, 1): give a fraction such as 0.5")
    if nm is not None:
        n, m = nm
        if sparsity is not None and abs(sparsity - n / m) > 1e-9:
            raise UsageError(f"pattern {n}:{m} prunes exactly {n}/{m} = {n / m:g} of the weights but "
                             f"--sparsity is {sparsity:g}: use --sparsity {n / m:g} (or leave it out)")
        sparsity = n / m
        if not spec.supports_nm:
            raise UsageError(f"--method {method} does not support N:M patterns: use --pattern unstructured")
    sparsity = DEFAULT_SPARSITY if sparsity is None else sparsity

    if per_row and method != "magnitude":
        raise UsageError("--per-row applies to --method magnitude only: drop it")
    if method != "sparsegpt":
        for option, value in (("--blocksize", blocksize), ("--percdamp", percdamp)):
            if value is not None:
                raise UsageError(f"{option} applies to --method sparsegpt only: drop it")
    _positive("--blocksize", blocksize)
    blocksize = defaults.blocksize if blocksize is None else blocksize
    if percdamp is not None and not (math.isfinite(percdamp) and percdamp > 0):
        raise UsageError(f"--percdamp must be a positive fraction of the mean Hessian diagonal, got {percdamp}")
    percdamp = defaults.percdamp if percdamp is None else percdamp
    if nm is not None and method == "sparsegpt" and blocksize % nm[1]:
        raise UsageError(f"--blocksize {blocksize} must be a multiple of M={nm[1]} for --pattern {pattern}")

    if layerwise not in LAYERWISE:
        if not layerwise.endswith(".json"):
            raise UsageError(f"unknown --layerwise {layerwise!r}: use one of {', '.join(LAYERWISE)}, "
                             "or a .json file of per-layer sparsities")
        if not Path(layerwise).is_file():
            raise UsageError(f"--layerwise {layerwise}: no such file: give a JSON file mapping decoder "
                             "layer names to sparsities")
    if layerwise != "uniform" and nm is not None:
        raise UsageError(f"--layerwise {layerwise} varies the sparsity per layer, which an N:M pattern fixes "
                         f"to {sparsity:g}: use --pattern unstructured, or --layerwise uniform")
    for option, value, owner in (("--owl-m", owl_m, "owl"), ("--owl-lambda", owl_lambda, "owl"),
                                 ("--dlp-alpha", dlp_alpha, "dlp")):
        if value is not None and layerwise != owner:
            raise UsageError(f"{option} applies to --layerwise {owner} only: drop it")
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be positive, got {value}")
    for option, value in (("--owl-lambda", owl_lambda), ("--dlp-alpha", dlp_alpha)):
        if value is not None and value >= 0.5:
            raise UsageError(f"{option} {value} spreads layer sparsities by +-{value:g}: use a value below 0.5")

    check_choice("--refine", refine, REFINERS)
    if refine == "none":
        for option, value in (("--dsnot-cycles", dsnot_cycles), ("--dsnot-skip", dsnot_skip)):
            if value is not None:
                raise UsageError(f"{option} applies to --refine dsnot only: add --refine dsnot or drop it")
    _positive("--dsnot-cycles", dsnot_cycles, minimum=0)
    for option, value in (("--targets", targets), ("--ignore", ignore), ("--dsnot-skip", dsnot_skip)):
        _check_regex(option, value)

    check_choice("--activation", activation, ACTIVATIONS)
    if activation == "none":
        for option, value in (("--act-sparsity", act_sparsity), ("--act-allocation", act_allocation),
                              ("--act-mode", act_mode)):
            if value is not None:
                raise UsageError(f"{option} applies to activation sparsity: add --activation teal|chess|wina or drop it")
        if method == "none":
            raise UsageError("--method none --activation none leaves the model as it is: give a pruning --method "
                             "or an --activation method")
    if act_sparsity is not None and not (math.isfinite(act_sparsity) and 0.0 <= act_sparsity < 1.0):
        raise UsageError(f"--act-sparsity {act_sparsity} is outside [0, 1): give a fraction such as 0.5")
    if act_allocation is not None:
        check_choice("--act-allocation", act_allocation, ACT_ALLOCATIONS)
    if act_mode is not None:
        check_choice("--act-mode", act_mode, ACT_MODES)
    if act_allocation == "greedy" and calibration.stats is not None:
        raise UsageError("--act-allocation greedy runs each decoder layer on calibration windows, which --stats "
                         "does not hold: drop --stats (and give --data), or use --act-allocation uniform")

    recipe = Recipe(method=method, sparsity=sparsity, nm=nm, per_row=per_row, blocksize=blocksize,
                    percdamp=percdamp, layerwise=layerwise,
                    owl_m=defaults.owl_m if owl_m is None else owl_m,
                    owl_lambda=defaults.owl_lambda if owl_lambda is None else owl_lambda,
                    dlp_alpha=defaults.dlp_alpha if dlp_alpha is None else dlp_alpha,
                    refine=refine, dsnot_cycles=defaults.dsnot_cycles if dsnot_cycles is None else dsnot_cycles,
                    dsnot_skip=dsnot_skip, targets=targets, ignore=ignore, activation=activation,
                    act_sparsity=defaults.act_sparsity if act_sparsity is None else act_sparsity,
                    act_allocation=act_allocation or defaults.act_allocation, act_mode=act_mode or defaults.act_mode,
                    calibration=calibration)
    if calibration.stats is not None and not recipe.needs_statistics:
        raise UsageError(f"--method {method} uses no calibration statistics, so --stats would be ignored: drop it")
    return recipe


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

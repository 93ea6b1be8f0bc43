"""`sparsekit prune` as a library call: prune a model by a `Recipe`, set activation-sparsity
thresholds on the pruned model if the recipe asks for them, and write the model directory.

The steps: check every option and the output (nothing loaded yet) -> load the model -> check the
recipe against its layers -> the calibration (windows run layer by layer, or a saved statistics
file checked against these weights) -> `sparsekit.pruning.pipeline.prune_model` (plan, select,
refine, apply) -> the activation stage -> cast to the saved dtype and write the directory with
its ``sparsekit.json`` atomically.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsekit.activation.plan import plan_activation
from sparsekit.activation.stage import ActivationResult, calibrate_activation
from sparsekit.anatomy import DEFAULT_IGNORE, prunable_linears
from sparsekit.data import check_data_request
from sparsekit.dtypes import DTYPES, dtype_name
from sparsekit.errors import UsageError
from sparsekit.eval.sparsity import SparsityReport, weight_sparsity
from sparsekit.files.atomic import check_output
from sparsekit.files.meta import prune_meta
from sparsekit.files.modeldir import write_model_dir
from sparsekit.files.statsfile import check_settings, check_stats_file, fingerprint, load_sketches, load_stats
from sparsekit.files.thresholds import ACTIVATION_FILE, activation_file
from sparsekit.loading import LoadedModel, skeleton
from sparsekit.pruning.pipeline import PruneRun, check_allocation_file, prune_model
from sparsekit.recipe import Recipe, check_against_model, check_choice
from sparsekit.version import __version__
from sparsekit.workflows.common import (Progress, Stopwatch, bos_id, calibration_ids, calibration_settings,
                                        check_finite_weights, check_load_options, check_model, engine_placement,
                                        guarded_output, load, model_dtype, notify, resolve_seqlen, versions)

__all__ = ["PruneResult", "SAVE_DTYPES", "prune"]

SAVE_DTYPES = ("auto", *DTYPES)


@dataclass
class PruneResult:
    """What a prune run did. ``meta`` is the model directory's ``sparsekit.json`` (what ``--json``
    prints, with ``output``); ``loaded`` is the pruned model in memory (cast to the saved dtype)."""
    output: str | None
    meta: dict
    run: PruneRun
    activation: ActivationResult | None
    loaded: LoadedModel
    sparsity: SparsityReport
    linears: int
    notes: list[str] = field(default_factory=list)   # "<linear>: <what a solver had to do>"

    def to_json(self) -> dict:
        return {"output": self.output, **self.meta}


def _seconds(run: PruneRun, act: ActivationResult | None, load_s: float, total: float) -> dict:
    act_s = act.seconds if act is not None else 0.0
    return {"total": round(total, 3), "load": round(load_s, 3),
            "prepare": round(total - load_s - run.seconds - act_s, 3),
            "activation": round(act_s, 3),
            "capture": round(run.times.capture, 3), "calibration_forwards": round(run.times.forward, 3),
            "pruning_math": round(run.times.process, 3), "refine": round(run.refine_seconds, 3),
            "allocation": round(run.allocation_seconds, 3), "pruning": round(run.seconds, 3)}


def _check_layers(model, recipe: Recipe) -> dict:
    """The checks that need the model's layers (targets, N:M, an allocation file, a statistics
    file's model and layers); on a weightless model they read no weight. Returns the targets."""
    found = prunable_linears(model, recipe.targets, recipe.ignore)
    check_against_model(recipe, found)
    check_allocation_file(model, recipe, found)
    if recipe.calibration.stats is not None:
        check_stats_file(recipe.calibration.stats, fingerprint(model, found), list(found),
                         need_hessian=recipe.needs_hessian)
    return found


def prune(model: str | LoadedModel, recipe: Recipe, output: str | Path | None = None, *,
          data: str | torch.Tensor | None = None, dtype: str = "auto", device: str = "auto", offload: bool = False,
          trust_remote_code: bool = False, save_dtype: str = "auto", overwrite: bool = False,
          progress: Progress | None = None) -> PruneResult:
    """Prune ``model`` (a model name, path or .gguf, or a `LoadedModel`) by ``recipe`` and write it
    to ``output`` (a directory; None keeps the pruned model in memory only).

    ``data`` overrides the recipe's calibration data: a source name or path, or calibration token
    ids [n, T] used as they are. ``save_dtype``: auto (the checkpoint's own; bfloat16 for a .gguf)
    or a dtype name. Every option is checked before the model loads; what needs the model's layers
    right after loading, before any calibration work. The output is written under a temporary name
    and moved into place at the end."""
    watch = Stopwatch()
    cal = recipe.calibration
    ids = None
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.dtype != torch.long:
            raise UsageError("data as a tensor must be calibration token ids [n, T] of dtype int64")
        ids = data
    elif data is not None:
        if cal.stats is not None:
            raise UsageError("the recipe reuses --stats, so data would be ignored: drop one of them")
        cal = dataclasses.replace(cal, data=str(data))
        recipe = dataclasses.replace(recipe, calibration=cal)
    notes: list[str] = []
    with ExitStack() as stack:
        check_choice("--save-dtype", save_dtype, SAVE_DTYPES)
        if output is not None:
            given = [model] if isinstance(model, str) and Path(model).exists() else []
            check_output(output, overwrite, inputs=given)
        dev = check_load_options(dtype, device, offload)
        check_model(model)
        calibrates = recipe.needs_statistics and cal.stats is None
        if calibrates and ids is None:
            check_data_request(cal.data, "calibration", cal.sampling,
                               why=" and ".join(recipe.statistics_readers) if cal.default_data else None)
        load_on, run_on = engine_placement(dev, offload)
        stack.enter_context(guarded_output(output, notes))
        if not isinstance(model, LoadedModel):  # what needs the layers, on a weightless model: before any weight loads
            _check_layers(skeleton(model, dtype=dtype, device=load_on, trust_remote_code=trust_remote_code,
                                   for_pruning=True), recipe)
        loaded, load_s = load(model, progress=progress, dtype=dtype, device=load_on,
                              trust_remote_code=trust_remote_code, for_pruning=True)
        found = _check_layers(loaded.model, recipe) if isinstance(model, LoadedModel) else \
            prunable_linears(loaded.model, recipe.targets, recipe.ignore)
        check_finite_weights(found)
        bos = bos_id(loaded, cal.bos)
        saved = None
        calib: dict = {"stats": None}
        if cal.stats is not None:
            saved, settings = load_stats(cal.stats, fingerprint(loaded.model, found), list(found),
                                         need_hessian=recipe.needs_hessian)
            check_settings(settings, {"bos": "always" if bos is not None else "never"}, cal.stats)
            if recipe.activation != "none" and not settings.get("activations"):
                raise UsageError(f"--stats {cal.stats} has no activation statistics, which --activation "
                                 f"{recipe.activation} needs: recalibrate with `sparsekit calibrate --activations`, "
                                 "or drop --stats")
            calib = {k: settings.get(k) for k in ("data", "nsamples", "seqlen", "seed", "sampling", "bos")}
            calib["stats"] = cal.stats
        elif calibrates:
            if ids is None:
                seqlen = resolve_seqlen(loaded.model, cal.seqlen)
                ids = calibration_ids(loaded, cal, seqlen, bos, progress, notes)
            calib = {**calibration_settings(cal, int(ids.shape[1]), bos), "stats": None}
            if isinstance(data, torch.Tensor):
                calib.update(data="(token ids)", nsamples=int(ids.shape[0]))

        label = f"{recipe.method} {recipe.pattern} @ {recipe.sparsity:g}"
        stage = [label]  # the phase the engine is in: "<label>: allocating layer sparsities", "<label>: pruning"

        def phase(name: str) -> None:
            stage[0] = f"{label}: {name}"
            notify(progress, stage[0])

        run = prune_model(loaded.model, recipe, found, calibration=ids, stats=saved, device=run_on,
                          on_layer=lambda i, n: notify(progress, stage[0], i + 1, n), on_phase=phase)
        act = None
        if recipe.activation != "none":
            stage = f"{recipe.activation} activation thresholds @ {recipe.act_sparsity:g}"
            notify(progress, stage)
            sketches = None
            if cal.stats is not None:
                sketches = load_sketches(cal.stats, plan_activation(loaded.model, recipe.activation).points)
            act = calibrate_activation(loaded.model, recipe, calibration=ids, sketches=sketches, calibration_doc=calib,
                                       device=run_on, on_layer=lambda i, n: notify(progress, stage, i + 1, n))
        notes += [f"{r.name}: {r.note}" for r in run.layers if r.note]
        report = weight_sparsity(loaded.model, found)
        recipe_doc = {**recipe.to_json(), "calibration": calib, "never_pruned": DEFAULT_IGNORE,
                      "model": loaded.source, "dtype": model_dtype(loaded.model), "versions": versions()}
        side_files = {}
        section = None
        if act is not None:
            section, tensors, metadata = activation_file(act.tensors, act.section)
            side_files[ACTIVATION_FILE] = (tensors, metadata)
        meta = prune_meta(version=__version__, recipe=recipe_doc, allocation=run.allocation,
                          layer_values=run.layer_values,
                          layers={r.name: {"target": r.target, "achieved": r.achieved, "seconds": round(r.seconds, 4),
                                           **({"swaps": r.swaps} if r.swaps is not None else {}),
                                           **({"note": r.note} if r.note else {})} for r in run.layers},
                          achieved=report.overall, activation=section)
        save_start = watch()
        target = loaded.checkpoint_dtype if save_dtype == "auto" else DTYPES[save_dtype]
        if target is not None and target != next(loaded.model.parameters()).dtype:
            loaded.model.to(target)
        meta["saved_dtype"] = dtype_name(next(loaded.model.parameters()).dtype)
        meta["seconds"] = _seconds(run, act, load_s, save_start)
        if output is not None:
            notify(progress, f"writing {output}")
            write_model_dir(loaded.model, loaded.tokenizer, output, meta, overwrite, side_files=side_files)
        seconds = meta["seconds"]
        seconds["save"] = round(watch() - save_start, 3)
        seconds["total"] = round(watch(), 3)
        return PruneResult(None if output is None else str(output), meta, run, act, loaded, report, len(found), notes)

"""`sparsekit prune`: the options of every registered plug-in, a recipe, the workflow, the summary."""

from typing import Annotated, Optional

import typer

from sparsekit.activation.methods import ACTIVATION_METHODS
from sparsekit.cli.calibrate import (BatchOpt, CalDataOpt, IgnoreOpt, NsamplesOpt, SamplingOpt, SeedOpt,
                                     TargetsOpt)
from sparsekit.cli.common import (BosOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OffloadOpt, OverwriteOpt,
                                  ProgressView, SeqlenOpt, TrustOpt, emit_json, err, out, with_plugin_options)
from sparsekit.cli.tables import activation_table, allocation_table, prune_table
from sparsekit.pruning.allocators import ALLOCATORS
from sparsekit.pruning.methods import METHODS
from sparsekit.pruning.refiners import REFINERS
from sparsekit.pruning.updates import UPDATES
from sparsekit.recipe import PLUGIN_REGISTRIES, make_calibration, make_recipe
from sparsekit.workflows.prune import prune


def _command():
    """The command function, with the plug-ins' options and help as registered right now."""

    @with_plugin_options(PLUGIN_REGISTRIES)
    def prune_cmd(
        model: ModelArg,
        output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the pruned model to.")],
        method: Annotated[str, typer.Option("--method", help=METHODS.help_text())] = "wanda",
        sparsity: Annotated[Optional[float], typer.Option(
            "--sparsity", help="Fraction of weights to zero, in [0, 1) (default 0.5). An N:M pattern defines it "
                               "(N/M); a different explicit value is an error.")] = None,
        pattern: Annotated[str, typer.Option(
            "--pattern", help="unstructured, or N:M (N of every M consecutive input weights pruned): "
                              "2:4 (GPU sparse kernels), 4:8, ...")] = "unstructured",
        layerwise: Annotated[str, typer.Option("--layerwise", help=ALLOCATORS.help_text(
            "Sparsity per decoder layer (unstructured only; the parameter-weighted mean stays --sparsity): "))
            ] = "uniform",
        refine: Annotated[str, typer.Option("--refine", help=REFINERS.help_text())] = "none",
        update: Annotated[str, typer.Option("--update", help=UPDATES.help_text(
            "Refit the kept weights for the final mask: auto (the method's own: sparsegpt's OBS update, none for "
            "the others); "))] = "auto",
        activation: Annotated[str, typer.Option("--activation", help=ACTIVATION_METHODS.help_text(
            "Dynamic activation sparsity, calibrated on the (pruned) model and saved with it: none; "))] = "none",
        act_sparsity: Annotated[Optional[float], typer.Option(
            "--act-sparsity", help="Fraction of the inputs of each sparsified site zeroed per token (default "
                                   "0.5).")] = None,
        act_allocation: Annotated[Optional[str], typer.Option(
            "--act-allocation", help="uniform (default: every site at --act-sparsity) or greedy (per-site "
                                     "sparsities chosen to minimise each block's output error at the same "
                                     "mean).")] = None,
        act_mode: Annotated[Optional[str], typer.Option(
            "--act-mode", help="all (default: every token) or decode (tokens generated one at a time; prefill "
                               "stays dense). Recorded in the model; `eval --act-mode` overrides it.")] = None,
        data: CalDataOpt = None, nsamples: NsamplesOpt = None, seqlen: SeqlenOpt = None,
        seed: SeedOpt = None, sampling: SamplingOpt = None, bos: BosOpt = "auto",
        stats: Annotated[Optional[str], typer.Option(
            "--stats", help="Reuse a `sparsekit calibrate` file (dense-model statistics) instead of "
                            "calibrating layer by layer; excludes --data/--nsamples/--seqlen/--seed/"
                            "--sampling.")] = None,
        targets: TargetsOpt = None, ignore: IgnoreOpt = None,
        batch_size: BatchOpt = 8, dtype: DtypeOpt = "auto",
        save_dtype: Annotated[str, typer.Option(
            "--save-dtype", help="dtype of the saved weights: auto (the checkpoint's own; bfloat16 for a .gguf), "
                                 "bfloat16, float16 or float32.")] = "auto",
        device: DeviceOpt = "auto", offload: OffloadOpt = False, trust_remote_code: TrustOpt = False,
        overwrite: OverwriteOpt = False, json_out: JsonOpt = False, **options,
    ) -> None:
        """Zero weights of the decoder's linear layers and save the pruned model.

        Per linear layer: plan (target sparsity from --layerwise), select (the method's mask), refine
        (--refine), apply. Methods that read statistics calibrate layer by layer (each layer sees the
        outputs of the already pruned layers before it), unless --stats gives saved statistics. The
        output is a Hugging Face model directory (zeros in the pruned weights) plus sparsekit.json with
        the recipe, the per-layer allocation and the sparsity achieved per layer; it is written under a
        temporary name and moved into place at the end.
        """
        cal = make_calibration(data=data, nsamples=nsamples, seqlen=seqlen, seed=seed, sampling=sampling, bos=bos,
                               batch_size=batch_size, stats=stats)
        recipe = make_recipe(method=method, sparsity=sparsity, pattern=pattern, layerwise=layerwise, refine=refine,
                             update=update,
                             targets=targets, ignore=ignore, activation=activation, act_sparsity=act_sparsity,
                             act_allocation=act_allocation, act_mode=act_mode, calibration=cal, **options)
        with ProgressView(quiet=json_out) as progress:
            res = prune(model, recipe, output, dtype=dtype, device=device, offload=offload,
                        trust_remote_code=trust_remote_code, save_dtype=save_dtype, overwrite=overwrite,
                        progress=progress)
        for note in res.notes:
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        if json_out:
            emit_json(res.to_json())
            return
        _summary(res, recipe, output)

    return prune_cmd


def _summary(res, recipe, output: str) -> None:
    run, meta = res.run, res.meta
    if recipe.layerwise != "uniform":
        out.print(allocation_table(recipe.layerwise, run.allocation, run.layer_values, recipe.allocator.value_label))
    if recipe.prunes_weights:
        out.print(prune_table(run, res.loaded.model))
    if res.activation is not None:
        out.print(activation_table(meta["activation"]))
    seconds = meta["seconds"]
    refine = f", {run.refine_seconds:.1f} s {recipe.refine}" if recipe.refiner.refine is not None else ""
    act_s = f", activation thresholds {res.activation.seconds:.1f} s" if res.activation is not None else ""
    achieved = (f"Achieved weight sparsity {res.sparsity.overall:.2%}" if recipe.prunes_weights else
                f"No weights pruned (the {res.sparsity.overall:.2%} zeros were already in the checkpoint)")
    out.print(f"{achieved} over {res.linears} linear layers, saved as "
              f"{meta['saved_dtype']} to {output}. Time {seconds['total']:.1f} s: load {seconds['load']:.1f} s, "
              f"calibration data {max(seconds['prepare'], 0):.1f} s, calibration forwards "
              f"{run.times.capture + run.times.forward:.1f} s, pruning math {run.times.process:.1f} s{refine}{act_s}, "
              f"save {seconds['save']:.1f} s")


def register(app) -> None:
    app.command("prune")(_command())

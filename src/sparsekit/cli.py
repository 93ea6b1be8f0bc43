"""The `sparsekit` command line: a thin Typer app over the library."""

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
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown")
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
    "--device", help="cpu, cuda (whole model on one GPU) or auto (accelerate device map over the "
                     "GPUs with CPU offload for what does not fit; cpu without a GPU).")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model code shipped with the checkpoint to run (off by default).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DataOpt = Annotated[str, typer.Option(
    "--data", help="Text: wikitext2, c4 or ptb (through `datasets`, needs network or a local cache), "
                   "or a local .txt (one row per line) / .jsonl / .json / .parquet file or folder.")]


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=True)


def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _quiet_transformers() -> None:
    """sparsekit draws its own progress; keep transformers' bars and warnings out of the way."""
    import transformers

    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def _load(model: str, dtype: str, device: str, trust_remote_code: bool, quiet: bool, tokenizer: bool = True):
    from contextlib import nullcontext

    from sparsekit.models import load_model

    _quiet_transformers()
    start = time.perf_counter()
    with nullcontext() if quiet else err.status(f"loading {model} (a .gguf is converted once, ~1 min) ..."):
        loaded = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                            tokenizer=tokenizer)
    return loaded, time.perf_counter() - start


@app.command("info")
def info_cmd(model: ModelArg, dtype: DtypeOpt = "auto", device: DeviceOpt = "cpu",
             trust_remote_code: TrustOpt = False, json_out: JsonOpt = False) -> None:
    """Describe a model: architecture, decoder layers, linear shapes, parameters, weight sparsity."""
    from sparsekit.export.loader import describe, is_export
    from sparsekit.models import decoder_layers, layer_linears, linear_kind, parameter_count
    from sparsekit.sparsity import weight_sparsity

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
        "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
        "layers": len(layers), "layers_path": path, "parameters": parameter_count(m),
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
    from sparsekit.report import export_table

    meta = facts.pop("sparsekit_meta") or {}
    facts = {"model": path, **facts, "recipe": meta.get("recipe")}
    if json_out:
        _emit_json(facts)
    else:
        out.print(export_table(path, facts))


@app.command("eval")
def eval_cmd(
    model: ModelArg,
    data: DataOpt = "wikitext2",
    seqlen: Annotated[Optional[int], typer.Option(
        "--seqlen", help="Tokens per window (default: min(model context, 2048)).")] = None,
    max_windows: Annotated[Optional[int], typer.Option(
        "--max-windows", help="Score only the first N windows (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    dtype: DtypeOpt = "auto", device: DeviceOpt = "cpu", trust_remote_code: TrustOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Perplexity with the SparseGPT/Wanda protocol, plus the model's measured weight sparsity.

    The text (the test split, or the whole local file) is joined with blank lines and tokenized
    once, cut into non-overlapping windows of --seqlen tokens (remainder dropped), and each
    window is scored alone (its first token is not predicted): ppl = exp(mean token NLL).
    """
    from sparsekit.data import eval_tokens, windows
    from sparsekit.eval.perplexity import perplexity
    from sparsekit.models import context_length
    from sparsekit.sparsity import weight_sparsity

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if max_windows is not None and max_windows < 1:
        raise UsageError(f"--max-windows must be at least 1, got {max_windows}")
    loaded, load_s = _load(model, dtype, device, trust_remote_code, json_out)
    ctx = context_length(loaded.model)
    seqlen = seqlen or min(ctx or 2048, 2048)
    if seqlen < 2:
        raise UsageError(f"--seqlen must be at least 2, got {seqlen}")
    if ctx is not None and seqlen > ctx:
        raise UsageError(f"--seqlen {seqlen} is longer than the model's context ({ctx}): use --seqlen {ctx} or less")
    wins = windows(eval_tokens(loaded.tokenizer, data), seqlen, max_windows)
    with _progress() as progress:
        task = progress.add_task(f"perplexity ({wins.shape[0]} x {seqlen})", total=wins.shape[0])
        result = perplexity(loaded.model, wins, batch_size,
                            on_batch=lambda n: progress.advance(task, n))
    sparsity = weight_sparsity(loaded.model)
    summary = {
        "model": model, "data": data, "seqlen": seqlen, "windows": result.windows,
        "tokens": result.tokens, "ppl": result.ppl, "nll": result.nll,
        "weight_sparsity": sparsity.overall, "sparsity_by_type": sparsity.by_kind(),
        "seconds": round(result.seconds, 3), "load_seconds": round(load_s, 3),
        "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
    }
    if json_out:
        _emit_json(summary)
        return
    table = Table(title=f"Perplexity of {model}")
    for col in ("data", "seqlen", "windows", "tokens", "perplexity", "weight sparsity", "seconds"):
        table.add_column(col, justify="left" if col == "data" else "right")
    table.add_row(data, str(seqlen), str(result.windows), str(result.tokens), f"{result.ppl:.4f}",
                  f"{sparsity.overall:.2%}", f"{result.seconds:.1f}")
    out.print(table)


# Calibration and pruning ------------------------------------------------------------------
CalDataOpt = Annotated[str, typer.Option(
    "--data", help="Calibration text: c4, wikitext2 or ptb (through `datasets`, needs network or a "
                   "local cache), a local .txt/.jsonl/.json/.parquet file or folder, or 'self' "
                   "(sampled from the model itself: no data needed).")]
NsamplesOpt = Annotated[int, typer.Option("--nsamples", help="Calibration windows.")]
CalSeqlenOpt = Annotated[Optional[int], typer.Option(
    "--seqlen", help="Tokens per calibration window (default: min(model context, 2048)).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random windows (and for --data self).")]
SamplingOpt = Annotated[str, typer.Option(
    "--sampling", help="random: window starts drawn at random (seeded); first: the first --nsamples "
                       "non-overlapping windows of the text (no randomness).")]
TargetsOpt = Annotated[Optional[str], typer.Option(
    "--targets", help="Regex: only linears inside decoder layers whose full name matches "
                      "(default: all of them; lm_head and embeddings are never targets).")]
IgnoreOpt = Annotated[Optional[str], typer.Option(
    "--ignore", help="Regex: skip linears whose full name matches, e.g. 'layers\\.0\\.|down_proj'.")]
BatchOpt = Annotated[int, typer.Option(
    "--batch-size", help="Calibration windows per layer forward (memory vs speed).")]
OffloadOpt = Annotated[bool, typer.Option(
    "--offload", help="Keep the weights in CPU memory and move one decoder layer at a time to the "
                      "GPU (a model far larger than GPU memory prunes on one GPU).")]
PruneDeviceOpt = Annotated[str, typer.Option(
    "--device", help="cpu, cuda (whole model on one GPU; add --offload for one layer at a time) "
                     "or auto (cuda with --offload when a GPU is visible, else cpu).")]


def _engine_placement(device: str, offload: bool) -> tuple[str, str | None]:
    """(device to load the weights on, device each layer runs on)."""
    import torch

    if device == "auto":
        device, offload = ("cuda", True) if torch.cuda.is_available() else ("cpu", False)
    if offload and device != "cuda":
        raise UsageError("--offload moves layers to a GPU: use it with --device cuda (or auto)")
    return ("cpu", "cuda") if offload else (device, None)


def _calibration(loaded, data: str, nsamples: int, seqlen: Optional[int], seed: int, sampling: str):
    from sparsekit.data import calibration_windows
    from sparsekit.models import context_length

    ctx = context_length(loaded.model)
    seqlen = seqlen or min(ctx or 2048, 2048)
    if ctx is not None and seqlen > ctx:
        raise UsageError(f"--seqlen {seqlen} is longer than the model's context ({ctx}): use --seqlen {ctx} or less")
    with err.status(f"preparing {nsamples} x {seqlen} calibration windows from {data} ..."):
        ids = calibration_windows(loaded.tokenizer, data, nsamples, seqlen, seed, sampling, model=loaded.model)
    return ids, seqlen


def _versions() -> dict:
    import torch
    import transformers

    import sparsekit

    return {"sparsekit": sparsekit.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


@app.command("calibrate")
def calibrate_cmd(
    model: ModelArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Statistics file to write (.safetensors).")],
    data: CalDataOpt = "c4", nsamples: NsamplesOpt = 128, seqlen: CalSeqlenOpt = None,
    seed: SeedOpt = 0, sampling: SamplingOpt = "random",
    hessian: Annotated[bool, typer.Option(
        "--hessian", help="Also store each layer's Hessian X^T X (needed by --method sparsegpt; "
                          "in_features^2 floats per layer).")] = False,
    targets: TargetsOpt = None, ignore: IgnoreOpt = None, batch_size: BatchOpt = 8,
    dtype: DtypeOpt = "auto", device: PruneDeviceOpt = "cpu", offload: OffloadOpt = False,
    trust_remote_code: TrustOpt = False, json_out: JsonOpt = False,
) -> None:
    """Run the dense model on calibration text and save reusable per-layer input statistics.

    Per linear layer: input channel second moments (Wanda), mean and variance (DSnoT), and with
    --hessian the Hessian (SparseGPT); saved with a fingerprint of the model and the settings,
    so `sparsekit prune --stats FILE` can reuse them without running the model again.
    """
    from sparsekit.calibrate.engine import run_sequential
    from sparsekit.calibrate.statsfile import fingerprint, save_stats
    from sparsekit.models import prunable_linears

    load_on, run_on = _engine_placement(device, offload)
    loaded, _ = _load(model, dtype, load_on, trust_remote_code, json_out)
    found = prunable_linears(loaded.model, targets, ignore)
    if not found:
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    ids, seqlen = _calibration(loaded, data, nsamples, seqlen, seed, sampling)
    collected = {}

    def keep(index, linears, stats):
        collected.update({n: s.to("cpu") for n, s in stats.items()})
        return False

    with _progress() as progress:
        task = progress.add_task("calibrating layers", total=None)
        times = run_sequential(loaded.model, ids, found, keep, batch_size=batch_size, device=run_on,
                               hessian=hessian, modifies=False, on_layer=lambda i, n: progress.update(task, completed=i + 1, total=n))
    settings = {"data": data, "nsamples": nsamples, "seqlen": seqlen, "seed": seed, "sampling": sampling,
                "hessian": hessian, "targets": targets, "ignore": ignore, "versions": _versions()}
    save_stats(output, collected, fingerprint(loaded.model, found), settings)
    summary = {"output": output, "layers": len(collected), **settings,
               "seconds": {"capture": round(times.capture, 3), "forward": round(times.forward, 3)}}
    if json_out:
        _emit_json(summary)
    else:
        out.print(f"Saved statistics for {len(collected)} linear layers ({nsamples} x {seqlen} tokens "
                  f"from {data}) to {output} in {times.capture + times.forward:.1f} s")


@app.command("prune")
def prune_cmd(
    model: ModelArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the pruned model to.")],
    method: Annotated[str, typer.Option(
        "--method", help="magnitude (|W|, no data), wanda (|W| x input norm, per output row) or "
                         "sparsegpt (Hessian-based masks with weight updates).")] = "wanda",
    sparsity: Annotated[float, typer.Option(
        "--sparsity", help="Fraction of weights to zero, in [0, 1). N:M patterns fix it to N/M.")] = 0.5,
    pattern: Annotated[str, typer.Option(
        "--pattern", help="unstructured, or N:M (N of every M consecutive input weights pruned): "
                          "2:4 (GPU sparse kernels), 4:8, ...")] = "unstructured",
    data: CalDataOpt = "c4", nsamples: NsamplesOpt = 128, seqlen: CalSeqlenOpt = None,
    seed: SeedOpt = 0, sampling: SamplingOpt = "random",
    stats: Annotated[Optional[str], typer.Option(
        "--stats", help="Reuse a `sparsekit calibrate` file (dense-model statistics) instead of "
                        "calibrating layer by layer.")] = None,
    targets: TargetsOpt = None, ignore: IgnoreOpt = None,
    per_row: Annotated[bool, typer.Option(
        "--per-row", help="magnitude: one threshold per output row instead of per matrix.")] = False,
    blocksize: Annotated[int, typer.Option("--blocksize", help="sparsegpt: columns per OBS block.")] = 128,
    percdamp: Annotated[float, typer.Option(
        "--percdamp", help="sparsegpt: Hessian dampening, as a fraction of its mean diagonal "
                           "(raised automatically if the Cholesky factorisation fails).")] = 0.01,
    batch_size: BatchOpt = 8, dtype: DtypeOpt = "auto", device: PruneDeviceOpt = "cpu",
    offload: OffloadOpt = False, trust_remote_code: TrustOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Zero weights of the decoder's linear layers and save the pruned model.

    Wanda and SparseGPT calibrate layer by layer (each layer sees the outputs of the already
    pruned layers before it), unless --stats gives saved statistics. The output is a Hugging
    Face model directory (zeros in the pruned weights) plus sparsekit.json with the recipe and
    the sparsity achieved per layer; it is written under a temporary name and moved into place
    at the end.
    """
    from sparsekit.calibrate.statsfile import fingerprint, load_stats
    from sparsekit.models import DEFAULT_IGNORE, prunable_linears
    from sparsekit.prune.masks import parse_pattern
    from sparsekit.prune.methods import NEEDS_STATS, PruneSpec
    from sparsekit.prune.pipeline import check_request, prune_model
    from sparsekit.prune.save import check_output, write_model_dir
    from sparsekit.sparsity import weight_sparsity

    try:
        nm = parse_pattern(pattern)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if nm is not None and sparsity == 0.5 and nm[0] / nm[1] != 0.5:
        sparsity = nm[0] / nm[1]  # the default follows the pattern
    spec = PruneSpec(method, sparsity, nm, per_row, blocksize, percdamp)
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--sparsity {sparsity} is outside [0, 1): give a fraction such as 0.5")
    check_output(output, overwrite)
    load_on, run_on = _engine_placement(device, offload)
    loaded, load_s = _load(model, dtype, load_on, trust_remote_code, json_out)
    found = prunable_linears(loaded.model, targets, ignore)
    check_request(spec, found)
    ids = saved = None
    calib = {"data": None, "nsamples": None, "seqlen": None, "seed": None, "sampling": None}
    if stats is not None:
        saved, settings = load_stats(stats, fingerprint(loaded.model, found), list(found),
                                     need_hessian=spec.needs_hessian)
        calib = {k: settings.get(k) for k in calib} | {"stats": stats}
    elif NEEDS_STATS[method]:
        ids, cal_seqlen = _calibration(loaded, data, nsamples, seqlen, seed, sampling)
        calib = {"data": data, "nsamples": nsamples, "seqlen": cal_seqlen, "seed": seed, "sampling": sampling}

    with _progress() as progress:
        task = progress.add_task(f"{method} {pattern} @ {spec.sparsity:g}", total=None)
        run = prune_model(loaded.model, spec, found, calibration=ids, stats=saved, batch_size=batch_size,
                          device=run_on, on_layer=lambda i, n: progress.update(task, completed=i + 1, total=n))
    for r in run.layers:
        if r.note:
            err.print(f"[yellow]note:[/] {r.name}: {r.note}")
    report = weight_sparsity(loaded.model, found)
    recipe = {"method": method, "pattern": pattern, "sparsity": spec.sparsity, **calib,
              "targets": targets, "ignore": ignore if ignore else None, "never_pruned": DEFAULT_IGNORE,
              "per_row": per_row if method == "magnitude" else None,
              "blocksize": blocksize if method == "sparsegpt" else None,
              "percdamp": percdamp if method == "sparsegpt" else None,
              "model": model, "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
              "versions": _versions()}
    seconds = {"total": round(run.seconds, 3), "capture": round(run.times.capture, 3),
               "calibration_forwards": round(run.times.forward, 3), "pruning_math": round(run.times.process, 3),
               "load": round(load_s, 3)}
    meta = {"sparsekit_version": _versions()["sparsekit"], "recipe": recipe,
            "layers": {r.name: {"target": r.target, "achieved": r.achieved, "seconds": round(r.seconds, 4),
                                **({"note": r.note} if r.note else {})} for r in run.layers},
            "achieved_sparsity": report.overall, "seconds": seconds}
    with err.status(f"writing {output} ..."):
        write_model_dir(loaded.model, loaded.tokenizer, output, meta, overwrite)
    if json_out:
        _emit_json({"output": output, **meta})
        return
    from sparsekit.report import prune_table

    out.print(prune_table(run, loaded.model))
    out.print(f"Achieved sparsity {report.overall:.2%} over {len(found)} linear layers. Time: "
              f"{run.seconds:.1f} s ({run.times.capture + run.times.forward:.1f} s calibration forwards, "
              f"{run.times.process:.1f} s pruning math). Saved to {output}")


@app.command("export")
def export_cmd(
    pruned: Annotated[str, typer.Argument(help="A directory written by `sparsekit prune`.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the export to.")],
    format: Annotated[str, typer.Option(
        "--format", help="sparse24: 2:4 compressed (compressed-tensors sparse-24-bitmask, 9/16 of the "
                         "16-bit linear bytes, runs with sparsekit's 2:4 kernels); bitmask: unstructured "
                         "(sparse-bitmask); dense: a plain checkpoint with zeros.")] = "sparse24",
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="Cast floating-point weights: bfloat16, float16 or float32 (default: as stored; "
                        "a model pruned on CPU is float32, so bfloat16 is usually what you want).")] = None,
    max_shard_size: Annotated[int, typer.Option(
        "--max-shard-size", help="Largest safetensors shard, in bytes (an index is written when sharded).")] = 2 * 1024 ** 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a pruned model as compressed or dense safetensors, with sparsekit's metadata.

    Layers targeted by the pruning recipe are compressed; a layer that is not exactly 2:4 is
    refused for sparse24 (never re-pruned). Written tensor by tensor into a temporary directory,
    moved into place at the end.
    """
    from pathlib import Path

    from sparsekit.export import FORMATS, export_model

    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}: use one of {', '.join(FORMATS)}")
    if not (Path(pruned) / "config.json").is_file():
        raise UsageError(f"{pruned}: not a model directory (no config.json): give the output of `sparsekit prune`")
    with _progress() as progress:
        task = progress.add_task(f"exporting {format}", total=None)
        summary = export_model(pruned, output, format=format, max_shard_bytes=max_shard_size, dtype=dtype,
                               overwrite=overwrite,
                               progress=lambda done, total, name: progress.update(task, completed=done, total=total))
    if json_out:
        _emit_json(summary)
        return
    mib = 2 ** 20
    out.print(f"Exported {summary['compressed_layers']} {format} layers to {output} ({summary['shards']} shard(s), "
              f"{summary['tensor_bytes'] / mib:.1f} MiB; linear weights {summary['linear_bytes'] / mib:.1f} MiB "
              f"of {summary['linear_dense_bytes'] / mib:.1f} MiB dense) in {summary['seconds']:.1f} s")


@app.command("bench")
def bench_cmd(
    model: Annotated[Optional[str], typer.Argument(
        help="A 2:4-pruned model directory (or any model: its exact 2:4 linears are swapped). "
             "Leave out with --random.")] = None,
    random: Annotated[Optional[str], typer.Option(
        "--random", help="Benchmark a random-weight model instead, pruned 2:4 by magnitude on the fly: "
                         "llama-3-8b, llama-3-1b, llama-tiny, or a config.json path.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")] = 1,
    prompt: Annotated[int, typer.Option("--prompt", help="Prompt tokens (prefill).")] = 512,
    new: Annotated[int, typer.Option("--new", help="New tokens generated (decode).")] = 128,
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16, float16 or float32.")] = "bfloat16",
    device: Annotated[str, typer.Option("--device", help="cuda (default when a GPU is visible) or cpu.")] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Decode and prefill tokens/s and peak memory, dense versus 2:4 sparse kernels.

    Both runs use the same runtime (static KV cache; on CUDA the decode step is captured in a
    CUDA graph) and their greedy outputs are checked against each other.
    """

    from sparsekit.bench import random_model, run_bench
    from sparsekit.models import DTYPES, resolve_device

    if (model is None) == (random is None):
        raise UsageError("give a MODEL or --random NAME (not both)")
    if min(batch, prompt, new) < 1:
        raise UsageError("--batch, --prompt and --new must be at least 1")
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    dev = resolve_device(device)
    dev = "cuda" if dev == "auto" else dev
    _quiet_transformers()
    if random is not None:
        with err.status(f"building random {random} ..."):
            try:
                m = random_model(random, dtype=DTYPES[dtype], device=dev)
            except (OSError, ValueError):
                from sparsekit.bench import RANDOM_MODELS

                raise UsageError(f"--random {random}: not a known size or a readable config.json: use one of "
                                 f"{', '.join(RANDOM_MODELS)}, or a path to a config.json") from None
        tok = None
    else:
        loaded, _ = _load(model, dtype, dev, False, json_out)
        m, tok = loaded.model, loaded.tokenizer
    with err.status("benchmarking dense, then 2:4 sparse ..."):
        result = run_bench(m, tok, batch=batch, prompt_len=prompt, new_tokens=new, device=dev)
    if json_out:
        _emit_json(result)
        return
    from sparsekit.report import bench_table

    out.print(bench_table(f"sparsekit bench: {random or model}, batch {batch}, prompt {prompt}, new {new}", result))
    out.print(f"Speedup: decode {result['speedup_decode']:.2f}x, prefill {result['speedup_prefill']:.2f}x; "
              f"{result['swapped_layers']} linears swapped; greedy tokens match: {result['tokens_match']}")


def main() -> None:
    try:
        app()
    except UsageError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(UsageError.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

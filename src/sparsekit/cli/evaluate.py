"""`sparsekit eval`: perplexity and measured sparsity."""

from typing import Annotated, Optional

import typer
from rich.table import Table

from sparsekit.cli.common import (BosOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OffloadOpt, ProgressView,
                                  SeqlenOpt, TrustOpt, emit_json, out)
from sparsekit.cli.tables import activation_report_table
from sparsekit.workflows.evaluate import evaluate


def eval_cmd(
    model: ModelArg,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Text (default wikitext2): wikitext2, c4 or ptb (through `datasets`, needs network or a "
                       "local cache; each evaluated with its reference protocol), or a local .txt (one row per "
                       "line) / .jsonl / .json / .parquet file or folder.")] = None,
    seqlen: SeqlenOpt = None,
    max_windows: Annotated[Optional[int], typer.Option(
        "--max-windows", help="Score only the first N windows (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")] = 1,
    bos: BosOpt = "auto",
    act_mode: Annotated[str, typer.Option(
        "--act-mode", help="Activation sparsity saved with the model: auto (as recorded), all (every token), "
                           "decode (one-token steps only: every evaluation window is prefill, so it stays "
                           "dense), or off.")] = "auto",
    compare: Annotated[Optional[str], typer.Option(
        "--compare", help="Also evaluate this model (e.g. the dense original) the same way, and show what the "
                          "first one costs against it (perplexity ratio).")] = None,
    dtype: DtypeOpt = "auto", device: DeviceOpt = "auto", offload: OffloadOpt = False,
    trust_remote_code: TrustOpt = False, json_out: JsonOpt = False,
) -> None:
    """Perplexity with the SparseGPT/Wanda protocol, plus the model's measured weight sparsity.

    The text (the test split, or the whole local file) is tokenized once, cut into
    non-overlapping windows of --seqlen tokens (remainder dropped), and each window is scored
    alone (its first token is not predicted): ppl = exp(mean token NLL). With --bos always each
    window starts with BOS in place of its (unscored) first token: same windows, same scored tokens.
    """
    with ProgressView(quiet=json_out) as progress:
        res = evaluate(model, data, seqlen=seqlen, max_windows=max_windows, batch_size=batch_size, bos=bos,
                       act_mode=act_mode, dtype=dtype, device=device, offload=offload,
                       trust_remote_code=trust_remote_code, baseline=compare, progress=progress)
    if json_out:
        emit_json(res.to_json())
        return
    title = f"Perplexity of {model}" + (f" against {compare}" if compare else "")
    table = Table(title=title)
    for col in (*(("model",) if compare else ()), "data", "seqlen", "bos", "windows", "tokens", "perplexity",
                "weight sparsity", "seconds"):
        table.add_column(col, justify="left" if col in ("data", "model") else "right")
    for row in ([res.baseline] if compare else []) + [res]:
        r = row.result
        table.add_row(*((row.model,) if compare else ()), row.data, str(row.seqlen), row.bos, str(r.windows),
                      str(r.tokens), f"{r.ppl:.4f}", f"{row.sparsity.overall:.2%}", f"{r.seconds:.1f}")
    out.print(table)
    if compare:
        out.print(f"Quality cost: perplexity {res.ppl:.2f} against {res.baseline.ppl:.2f} "
                  f"({res.ppl / res.baseline.ppl:.2f}x) at {res.sparsity.overall:.1%} weight sparsity")
    if res.activation:
        out.print(activation_report_table(res.activation))


def register(app) -> None:
    app.command("eval")(eval_cmd)

"""`sparsekit bench`: decode and prefill speed, dense against sparse."""

import sys
from typing import Annotated, Optional

import typer

from sparsekit.cli.common import DeviceOpt, JsonOpt, ProgressView, emit_json, err, out
from sparsekit.cli.tables import bench_table
from sparsekit.workflows.bench import BenchCheckError, bench


def bench_cmd(
    model: Annotated[Optional[str], typer.Argument(
        help="A 2:4-pruned model directory or export (or any model: its exact 2:4 linears are swapped; saved "
             "activation thresholds are timed too). Leave out with --random.")] = None,
    random: Annotated[Optional[str], typer.Option(
        "--random", help="Benchmark a random-weight model instead, pruned 2:4 by magnitude on the fly: "
                         "llama-3-8b, llama-3-1b, llama-tiny, or a config.json path.")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")] = 1,
    prompt: Annotated[int, typer.Option("--prompt", help="Prompt tokens (prefill).")] = 512,
    new: Annotated[int, typer.Option("--new", help="New tokens generated (decode).")] = 128,
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16, float16 or float32.")] = "bfloat16",
    device: DeviceOpt = "auto",
    activation: Annotated[Optional[float], typer.Option(
        "--activation", help="Also time activation sparsity: TEAL-style thresholds zeroing this fraction of "
                             "every linear input, set on the bench prompt (a speed setting, not a quality "
                             "one; a model with saved thresholds uses its own).")] = None,
    cusparselt: Annotated[bool, typer.Option(
        "--cusparselt", help="Also build cuSPARSELt copies of the 2:4 weights for large M (prefill); "
                             "costs another 9/16 of the dense bytes.")] = False,
    eager: Annotated[bool, typer.Option(
        "--eager", help="Run the decode step eagerly (no torch.compile, no CUDA graph).")] = False,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="Skip the self-check of the sparse logits against the reference's.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Decode and prefill tokens/s and peak memory, dense versus sparse (2:4 kernels, activation sparsity).

    Dense (the model with zeros) and sparse run in the same runtime: static KV cache, on CUDA the
    decode step compiled with torch.compile and captured in a CUDA graph. The dense run decodes
    greedily; the sparse run is fed the same tokens and its logits (prefill and every decode step)
    must match the reference's within a dtype tolerance (bfloat16 0.1, float16 0.02, float32 1e-4,
    relative to the logit scale), else the command fails with exit code 1. Greedy token
    agreement is reported, not required.
    """
    title = f"sparsekit bench: {random or model}, batch {batch}, prompt {prompt}, new {new}"
    try:
        with ProgressView(quiet=json_out) as progress:
            result = bench(model, random=random, batch=batch, prompt=prompt, new=new, dtype=dtype, device=device,
                           cusparselt=cusparselt, eager=eager, check=not no_check, activation=activation,
                           progress=progress)
    except BenchCheckError as exc:
        if json_out:
            emit_json(exc.result)
        else:
            out.print(bench_table(title, exc.result))
        what = ("the sparse path does not compute the masked dense reference" if exc.result.get("activation")
                else "the 2:4 path does not compute the dense model")
        err.print(f"error: {what}: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    if json_out:
        emit_json(result)
        return
    out.print(bench_table(title, result))
    what, ref = ("sparse", "the masked dense reference") if result.get("activation") else ("2:4", "dense")
    check = ("self-check skipped" if no_check else
             f"{what} logits within {result['tolerance']:g} of {ref} (max relative difference "
             f"{result['max_logit_rel_diff']:.3g} over {result['logit_rows_compared']} rows)")
    out.print(f"Speedup: decode {result['speedup_decode']:.2f}x, prefill {result['speedup_prefill']:.2f}x; "
              f"{result['swapped_layers']} linears swapped; {check}; greedy token agreement "
              f"{result['token_agreement']:.1%}")
    if result.get("note"):
        out.print(f"Note: {result['note']}", highlight=False, markup=False)


def register(app) -> None:
    app.command("bench")(bench_cmd)

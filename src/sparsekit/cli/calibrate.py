"""`sparsekit calibrate`: save reusable per-layer statistics; the calibration options it shares with
`prune`."""

from typing import Annotated, Optional

import typer

from sparsekit.cli.common import (BosOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelArg, OffloadOpt, OverwriteOpt,
                                  ProgressView, SeqlenOpt, TrustOpt, emit_json, err, out)
from sparsekit.recipe import make_calibration
from sparsekit.workflows.calibrate import calibrate

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
    cal = make_calibration(data=data, nsamples=nsamples, seqlen=seqlen, seed=seed, sampling=sampling,
                           bos=bos, batch_size=batch_size)
    with ProgressView(quiet=json_out) as progress:
        res = calibrate(model, output, cal, hessian=hessian, activations=activations, targets=targets,
                        ignore=ignore, dtype=dtype, device=device, offload=offload,
                        trust_remote_code=trust_remote_code, overwrite=overwrite, progress=progress)
    for note in res.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if json_out:
        emit_json(res.to_json())
        return
    s = res.settings
    out.print(f"Saved statistics for {res.layers} linear layers ({s['nsamples']} x {s['seqlen']} tokens from "
              f"{s['data']}, BOS {s['bos']}) to {output} in {res.seconds:.1f} s "
              f"({res.times.capture + res.times.forward:.1f} s calibration forwards)")


def register(app) -> None:
    app.command("calibrate")(calibrate_cmd)

"""`sparsekit calibrate` as a library call: run the dense model on calibration text and save
reusable per-layer input statistics (and optionally Hessians and activation sketches) to one
file, tied to the exact weights (`sparsekit.files.statsfile`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sparsekit.activation.collect import LayerSketches
from sparsekit.anatomy import prunable_linears
from sparsekit.calibration.engine import EngineTimes, run_sequential
from sparsekit.data import check_data_request
from sparsekit.errors import UsageError
from sparsekit.files.atomic import check_output_file
from sparsekit.files.statsfile import StatsWriter, fingerprint
from sparsekit.loading import LoadedModel, skeleton
from sparsekit.recipe import Calibration, make_calibration
from sparsekit.registry import regex
from sparsekit.workflows.common import (Progress, Stopwatch, bos_id, calibration_ids, calibration_settings,
                                        check_finite_weights, check_load_options, check_model, engine_placement,
                                        guarded_output, load, notify, resolve_seqlen, versions)

__all__ = ["CalibrateResult", "calibrate"]


@dataclass
class CalibrateResult:
    output: str
    layers: int                 # linears with statistics
    settings: dict              # what the file records (calibration, hessian, activations, targets, versions)
    times: EngineTimes
    seconds: float
    tokens: int                 # calibration tokens (nsamples x seqlen)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"output": self.output, "layers": self.layers, **self.settings,
                "seconds": {"total": round(self.seconds, 3), "capture": round(self.times.capture, 3),
                            "forward": round(self.times.forward, 3)}}


def calibrate(model: str | LoadedModel, output: str | Path, calibration: Calibration | None = None, *,
              hessian: bool = False, activations: bool = False, targets: str | None = None,
              ignore: str | None = None, dtype: str = "auto", device: str = "auto", offload: bool = False,
              trust_remote_code: bool = False, overwrite: bool = False,
              progress: Progress | None = None) -> CalibrateResult:
    """Run the dense model on ``calibration`` windows (default: `make_calibration()`) layer by
    layer and write the statistics of every targeted linear to ``output``.

    Per linear: input channel second moments (Wanda), mean and variance (DSnoT), and with
    ``hessian`` the Hessian (SparseGPT); with ``activations`` the activation-sparsity sketches
    from which `prune --activation ... --stats FILE` sets thresholds without running the model.
    Every option is checked before the model loads; the file is written layer by layer under a
    temporary name and moved into place at the end."""
    watch = Stopwatch()
    cal = calibration if calibration is not None else make_calibration()
    if cal.stats is not None:
        raise UsageError("calibrate makes a statistics file: give --data, not --stats")
    for flag, value in (("--targets", targets), ("--ignore", ignore)):
        if value is not None:
            regex(flag, value)
    output = str(output)
    check_output_file(output, overwrite)
    dev = check_load_options(dtype, device, offload)
    check_model(model)
    check_data_request(cal.data, "calibration", cal.sampling, why="calibrate" if cal.default_data else None)
    load_on, run_on = engine_placement(dev, offload)
    notes: list[str] = []
    with guarded_output(output, notes):
        return _calibrate(model, output, cal, notes, watch, hessian=hessian, activations=activations, targets=targets,
                          ignore=ignore, dtype=dtype, load_on=load_on, run_on=run_on,
                          trust_remote_code=trust_remote_code, progress=progress)


def _calibrate(model, output: str, cal: Calibration, notes: list[str], watch: Stopwatch, *, hessian: bool,
               activations: bool, targets, ignore, dtype: str, load_on, run_on, trust_remote_code: bool,
               progress: Progress | None) -> CalibrateResult:
    if not isinstance(model, LoadedModel) and not prunable_linears(
            skeleton(model, dtype=dtype, device=load_on, trust_remote_code=trust_remote_code, for_pruning=True),
            targets, ignore):
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    loaded, _ = load(model, progress=progress, dtype=dtype, device=load_on, trust_remote_code=trust_remote_code,
                     for_pruning=True)
    found = prunable_linears(loaded.model, targets, ignore)
    if not found:
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    check_finite_weights(found)
    seqlen = resolve_seqlen(loaded.model, cal.seqlen)
    bos = bos_id(loaded, cal.bos)
    ids = calibration_ids(loaded, cal, seqlen, bos, progress, notes)
    settings = {**calibration_settings(cal, seqlen, bos), "hessian": hessian, "activations": activations,
                "targets": targets, "ignore": ignore, "versions": versions()}
    writer = StatsWriter(output, fingerprint(loaded.model, found), settings)
    count = 0
    sketches = LayerSketches(loaded.model, device=run_on) if activations else None

    def keep(index, linears, stats) -> bool:
        nonlocal count
        writer.add_layer(stats)
        count += len(stats)
        return False

    def layer_done(index: int, total: int) -> None:
        if sketches is not None:  # this layer's sketches are complete: write them, free them
            writer.add_tensors(sketches.take_layer(index))
        notify(progress, "calibrating layers", index + 1, total)

    notify(progress, "calibrating layers")
    with writer:
        try:
            times = run_sequential(loaded.model, ids, found, keep, batch_size=cal.batch_size, device=run_on,
                                   hessian=hessian, modifies=False, on_layer=layer_done)
        finally:
            if sketches is not None:
                sketches.close()
        writer.finish()
    return CalibrateResult(output, count, settings, times, watch(), cal.nsamples * seqlen, notes)

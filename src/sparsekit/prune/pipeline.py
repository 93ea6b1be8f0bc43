"""Prune a whole model: pick the targets, check the request, run the sequential engine (or
reuse saved statistics), and report per layer what was achieved and how long it took."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from sparsekit.calibrate.engine import EngineTimes, run_sequential
from sparsekit.calibrate.stats import InputStats
from sparsekit.errors import UsageError
from sparsekit.prune.methods import METHODS, NEEDS_STATS, PruneSpec, prune_weight_


@dataclass
class LayerResult:
    name: str
    target: float
    achieved: float
    seconds: float
    note: str = ""


@dataclass
class PruneRun:
    layers: list[LayerResult] = field(default_factory=list)
    times: EngineTimes = field(default_factory=EngineTimes)
    seconds: float = 0.0


def check_request(spec: PruneSpec, targets: dict[str, nn.Linear]) -> None:
    """Refuse impossible requests before any work, one clear line each."""
    if spec.method not in METHODS:
        raise UsageError(f"unknown --method {spec.method!r}: use one of {', '.join(METHODS)}")
    if not 0.0 <= spec.sparsity < 1.0:
        raise UsageError(f"--sparsity {spec.sparsity} is outside [0, 1): give a fraction such as 0.5")
    if not targets:
        raise UsageError("no linear layers match --targets/--ignore: loosen the patterns")
    if spec.nm is not None:
        n, m = spec.nm
        if abs(spec.sparsity - n / m) > 1e-9:
            raise UsageError(f"pattern {n}:{m} prunes exactly {n}/{m} = {n / m:g} of the weights but "
                             f"--sparsity is {spec.sparsity:g}: use --sparsity {n / m:g} (or leave it out)")
        bad = [(name, lin.in_features) for name, lin in targets.items() if lin.in_features % m]
        if bad:
            name, k = bad[0]
            raise UsageError(f"{n}:{m} does not divide layer {name}: its input dimension {k} is not a "
                             f"multiple of {m}; exclude it with --ignore or pick another pattern")
    if spec.method == "sparsegpt" and spec.nm is not None and spec.blocksize % spec.nm[1]:
        raise UsageError(f"--blocksize {spec.blocksize} must be a multiple of M={spec.nm[1]}")


def _prune_one(name: str, lin: nn.Linear, spec: PruneSpec, stats: InputStats | None,
               device: torch.device | None) -> LayerResult:
    start = time.perf_counter()
    weight = lin.weight.data
    work = weight.to(device) if device is not None and weight.device != device else weight
    outcome = prune_weight_(work, spec, stats)
    if work is not weight:
        weight.copy_(work)
    return LayerResult(name, spec.nm[0] / spec.nm[1] if spec.nm else spec.sparsity,
                       outcome.zeros / outcome.numel, time.perf_counter() - start, outcome.note)


def prune_model(model: nn.Module, spec: PruneSpec, targets: dict[str, nn.Linear], *,
                calibration: torch.Tensor | None = None, stats: dict[str, InputStats] | None = None,
                batch_size: int = 8, device: str | torch.device | None = None,
                offload_activations: bool | None = None,
                on_layer: Callable[[int, int], None] | None = None,
                on_result: Callable[[LayerResult], None] | None = None) -> PruneRun:
    """Prune `targets` of `model` in place.

    - magnitude needs no data;
    - with `stats` (from `sparsekit calibrate`), each linear is pruned from those dense-model
      statistics, no forward pass;
    - otherwise the sequential engine calibrates on `calibration` token ids [n, T], pruning
      each decoder layer before computing the next layer's inputs (`device` and
      `offload_activations` as in `run_sequential`).
    """
    check_request(spec, targets)
    run = PruneRun()
    start = time.perf_counter()
    dev = torch.device(device) if device is not None else None

    def record(result: LayerResult) -> None:
        run.layers.append(result)
        if on_result is not None:
            on_result(result)

    if not NEEDS_STATS[spec.method] or stats is not None:
        names = list(targets)
        for k, name in enumerate(names):
            record(_prune_one(name, targets[name], spec, stats.get(name) if stats else None, dev))
            if on_layer is not None:
                on_layer(k, len(names))
        run.times.process = time.perf_counter() - start
    else:
        if calibration is None:
            raise UsageError(f"--method {spec.method} needs calibration data: give --data or --stats")

        def callback(index: int, linears: dict[str, nn.Linear], layer_stats: dict[str, InputStats]) -> bool:
            for name, lin in linears.items():
                record(_prune_one(name, lin, spec, layer_stats[name], None))
            return True

        run.times = run_sequential(model, calibration, targets, callback, batch_size=batch_size,
                                   device=dev, offload_activations=offload_activations,
                                   hessian=spec.needs_hessian, on_layer=on_layer)
    run.seconds = time.perf_counter() - start
    return run

"""The sequential layer-by-layer engine.

One decoder layer at a time: run it over the cached calibration activations with hooks that
accumulate input statistics for its linear layers, let a callback use them (prune the layer, or
just keep the statistics), recompute the layer's outputs if its weights changed, and feed those
to the next layer (the SparseGPT/Wanda protocol). Only the current layer needs to be on the
execution device; activations can live on the CPU. Nothing here knows about pruning methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from sparsekit.calibrate.capture import capture_layer_calls, layer_output, map_tensors
from sparsekit.calibrate.stats import InputStats
from sparsekit.models import decoder_layers

# callback(layer index, {full name: linear}, {full name: stats}) -> True if the weights changed
LayerCallback = Callable[[int, dict[str, nn.Linear], dict[str, InputStats]], bool]


@dataclass
class EngineTimes:
    capture: float = 0.0      # embedding forward + argument capture
    forward: float = 0.0      # statistics forwards and recomputes of the layers
    process: float = 0.0      # the callback (pruning math)
    per_layer: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _layer_device(layer: nn.Module) -> torch.device:
    p = next(layer.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _InputHooks:
    """Forward hooks feeding each linear's input into its accumulator. Linears that read the
    very same input tensor (q/k/v, gate/up) share one accumulator: it is computed once."""

    def __init__(self, linears: dict[str, nn.Linear], hessian: bool, device: torch.device):
        self.stats: dict[str, InputStats] = {}
        self.alias: dict[str, str] = {}
        self._first_batch = True
        self.sequences = 1          # sequences in the batch being run (set by the engine)
        self._seen: dict[tuple, str] = {}
        self._handles = [lin.register_forward_hook(self._hook(name)) for name, lin in linears.items()]
        self._linears = linears
        self._hessian, self._device = hessian, device

    def _hook(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            if self._first_batch:
                key = (x.data_ptr(), tuple(x.shape), x.dtype)
                if key in self._seen:
                    self.alias[name] = self._seen[key][0]
                    return
                # hold the tensor until the batch ends, so its memory cannot be reused by a
                # later, different input that would then look like the same one
                self._seen[key] = (name, x)
                self.stats[name] = InputStats(module.in_features, hessian=self._hessian, device=self._device)
            elif name in self.alias:
                return
            self.stats[name].update(x, nseq=self.sequences)
        return hook

    def end_batch(self) -> None:
        self._first_batch = False
        self._seen.clear()

    def close(self) -> dict[str, InputStats]:
        for h in self._handles:
            h.remove()
        out = dict(self.stats)
        for name, owner in self.alias.items():
            out[name] = out[owner]
        return {name: out[name] for name in self._linears if name in out}


@torch.no_grad()
def run_sequential(model: nn.Module, calibration: torch.Tensor, targets: dict[str, nn.Linear],
                   callback: LayerCallback, *, batch_size: int = 8, device: str | torch.device | None = None,
                   offload_activations: bool | None = None, hessian: bool = False, collect: bool = True,
                   on_layer: Callable[[int, int], None] | None = None) -> EngineTimes:
    """Run the sequential protocol over `calibration` token ids [n, T].

    targets: full name -> linear to collect statistics for (and hand to the callback).
    device: where each layer runs (default: where the model's layers are). A layer that lives
        elsewhere (CPU-offloaded weights) is moved there for its turn and moved back after.
    offload_activations: keep the cached activations on the CPU (default: when layers are moved).
    collect: set False when the callback needs no statistics (skips the statistics pass).
    """
    path, layers = decoder_layers(model)
    home = _layer_device(layers[0])
    device = torch.device(device) if device is not None else home
    if offload_activations is None:
        offload_activations = home != device
    store = torch.device("cpu") if offload_activations else device
    times = EngineTimes()

    start = time.perf_counter()
    batches = list(calibration.split(batch_size))
    calls = capture_layer_calls(model, batches, store=store)
    hidden = calls.hidden
    times.capture = time.perf_counter() - start

    for i, layer in enumerate(layers):
        layer_start = time.perf_counter()
        original = _layer_device(layer)
        if original != device:
            layer.to(device)
        prefix = f"{path}.{i}."
        linears = {n: m for n, m in targets.items() if n.startswith(prefix)}
        args = {b: map_tensors(a, lambda t: t.to(device)) for b, a in
                ((b, calls.args[b][i]) for b in calls.args)}

        def forward_all() -> list[torch.Tensor]:
            outs = []
            for h in hidden:
                pos, kw = args[h.shape[0]]
                if hooks is not None:
                    hooks.sequences = h.shape[0]
                outs.append(layer_output(layer(h.to(device), *pos, **kw)).to(store))
                if hooks is not None:
                    hooks.end_batch()
            return outs

        t0 = time.perf_counter()
        hooks = _InputHooks(linears, hessian, device) if (collect and linears) else None
        try:
            outputs = forward_all()
        finally:
            stats = hooks.close() if hooks is not None else {}
        hooks = None
        _sync(device)
        t1 = time.perf_counter()
        changed = callback(i, linears, stats) if linears else False
        del stats
        _sync(device)
        t2 = time.perf_counter()
        if changed and i < len(layers) - 1:
            outputs = forward_all()
            _sync(device)
        t3 = time.perf_counter()
        times.forward += (t1 - t0) + (t3 - t2)
        times.process += t2 - t1
        hidden = outputs
        if original != device:
            layer.to(original)
        times.per_layer.append(time.perf_counter() - layer_start)
        if on_layer is not None:
            on_layer(i, len(layers))
    return times

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

from sparsekit.calibration.capture import capture_layer_calls, layer_output, map_tensors
from sparsekit.calibration.stats import InputStats
from sparsekit.errors import NumericalError
from sparsekit.anatomy import decoder_layers

# callback(layer index, {full name: linear}, {full name: stats}) -> True if the layer changed
# (with `layer_runner`, a fourth argument: run_layer() -> the layer's outputs on every cached
# batch, concatenated, without writing them)
LayerCallback = Callable[..., bool]


@dataclass
class EngineTimes:
    capture: float = 0.0      # embedding forward + argument capture
    forward: float = 0.0      # statistics forwards and recomputes of the layers
    process: float = 0.0      # the callback (pruning math)
    per_layer: list[float] = field(default_factory=list)
    activations_on: str = ""  # where the cached activations lived ("cpu", "cuda", ...)


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


def activation_bytes(model: nn.Module, calibration: torch.Tensor) -> int:
    """Bytes of one copy of the cached hidden states for `calibration` token ids."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    dtype = model.get_input_embeddings().weight.dtype
    return calibration.numel() * int(config.hidden_size) * torch.tensor([], dtype=dtype).element_size()


def keep_activations_on_device(needed: int, device: torch.device) -> bool:
    """With CPU-offloaded weights, keep the cached activations on the GPU when they take at
    most a quarter of its memory and half of what is free: moving them over PCIe on every
    pass costs more than the forwards (a Llama-3-8B at 128 x 2048 tokens: 2 GiB per copy)."""
    if device.type != "cuda":
        return False
    free, total = torch.cuda.mem_get_info(device)
    return needed <= min(total // 4, free // 2)


@torch.no_grad()
def run_sequential(model: nn.Module, calibration: torch.Tensor, targets: dict[str, nn.Linear],
                   callback: LayerCallback, *, batch_size: int = 8, device: str | torch.device | None = None,
                   offload_activations: bool | None = None, hessian: bool = False, collect: bool = True,
                   modifies: bool = True, layer_runner: bool = False,
                   on_layer: Callable[[int, int], None] | None = None) -> EngineTimes:
    """Run the sequential protocol over `calibration` token ids [n, T].

    targets: full name -> linear to collect statistics for (and hand to the callback).
    device: where each layer runs (default: where the model's layers are). A layer that lives
        elsewhere (CPU-offloaded weights) is moved there for its turn and moved back after.
    offload_activations: keep the cached activations on the CPU (pinned, copied asynchronously).
        Default: only when layers are moved and the activations do not fit comfortably on the
        device (`keep_activations_on_device`).
    collect: set False when the callback needs no statistics (skips the statistics pass).
    modifies: the callback changes the layer's weights (pruning). The statistics pass then
        only collects, and the layer's outputs come from a recompute that overwrites its inputs
        in place (one copy of the activations in memory). With False the statistics pass
        writes the outputs in place and the callback must return False.
    layer_runner: also hand the callback `run_layer()`, which runs the current layer on every
        cached batch and returns its outputs concatenated (nothing written): for callbacks that
        measure the layer while changing it (activation-sparsity thresholds, greedy search).
    """
    path, layers = decoder_layers(model)
    home = _layer_device(layers[0])
    device = torch.device(device) if device is not None else home
    if offload_activations is None:
        offload_activations = home != device and not keep_activations_on_device(
            activation_bytes(model, calibration), device)
    store = torch.device("cpu") if offload_activations else device
    pin = store.type == "cpu" and device.type == "cuda"
    times = EngineTimes(activations_on=str(store))

    start = time.perf_counter()
    batches = list(calibration.split(batch_size))
    calls = capture_layer_calls(model, batches, store=store)
    hidden = [h.pin_memory() for h in calls.hidden] if pin else calls.hidden
    calls.hidden = hidden
    if not all(bool(torch.isfinite(h).all()) for h in hidden):
        raise NumericalError("the embeddings produced NaN or inf for the calibration tokens: check the checkpoint")
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

        def forward_all(write: bool) -> None:
            """Run the layer on every batch; with `write`, its outputs replace its inputs. Outputs
            holding NaN or inf stop the run (one flag per pass, so no extra host syncs)."""
            finite = torch.ones((), dtype=torch.bool, device=device)
            for h in hidden:
                pos, kw = args[h.shape[0]]
                if hooks is not None:
                    hooks.sequences = h.shape[0]
                out = layer_output(layer(h.to(device, non_blocking=pin), *pos, **kw))
                if hooks is not None:
                    hooks.end_batch()
                finite &= torch.isfinite(out).all()
                if write:
                    h.copy_(out, non_blocking=pin)
                del out
            if not bool(finite):
                raise NumericalError(f"decoder layer {i} ({prefix[:-1]}) produced NaN or inf activations on the "
                                     "calibration data: run in float32 or bfloat16 (--dtype), or check the checkpoint")

        stats_pass = collect and bool(linears)
        t0 = time.perf_counter()
        if stats_pass:
            hooks = _InputHooks(linears, hessian, device)
            try:
                forward_all(write=not modifies)
            finally:
                stats = hooks.close()
        else:
            stats = {}
        hooks = None
        _sync(device)
        t1 = time.perf_counter()
        if not linears:
            changed = False
        elif layer_runner:
            def run_layer() -> torch.Tensor:
                outs = []
                for h in hidden:
                    pos, kw = args[h.shape[0]]
                    outs.append(layer_output(layer(h.to(device, non_blocking=pin), *pos, **kw)))
                return torch.cat(outs)

            changed = callback(i, linears, stats, run_layer)
        else:
            changed = callback(i, linears, stats)
        del stats
        _sync(device)
        t2 = time.perf_counter()
        if changed and not modifies:
            raise RuntimeError("the callback changed a layer's weights after run_sequential(modifies=False) "
                               "had already written its outputs")
        if (modifies or not stats_pass) and i < len(layers) - 1:
            forward_all(write=True)
            _sync(device)
        t3 = time.perf_counter()
        times.forward += (t1 - t0) + (t3 - t2)
        times.process += t2 - t1
        if original != device:
            layer.to(original)
        times.per_layer.append(time.perf_counter() - layer_start)
        if on_layer is not None:
            on_layer(i, len(layers))
    return times

"""Feed `ActivationSketch`es from forward hooks, for the points of a `Plan` (or of
`calibration_points`).

The hooks work under any driver: plain model forwards, or the sequential
calibration engine running one decoder layer at a time (attach the collector, toggle
``enabled`` so each layer is seen once). Where a site is already wrapped by the runtime
(`ActSparse`), the hook reads the activation *before* the mask: the wrapper's input for input
points, the wrapped module's output for output points.
"""

from __future__ import annotations


import torch
from torch import nn

from sparsekit.activation.plan import Point, calibration_points
from sparsekit.activation.sketch import ActivationSketch
from sparsekit.anatomy import Wrapper, decoder_layers, unwrap
from sparsekit.files.thresholds import sketch_tensors

__all__ = ["SketchCollector"]


class SketchCollector:
    """Hooks feeding one sketch per point while ``enabled``; `close` removes them.

    ``grid``: keyword arguments for `ActivationSketch` (mantissa_bits, min_exp, max_exp).
    ``device``: where the sketches live (None: where the activations are).
    """

    def __init__(self, model: nn.Module, points: dict[str, Point], *, device=None, **grid):
        self.points = dict(points)
        self.sketches: dict[str, ActivationSketch] = {
            key: ActivationSketch(p.channels, histogram=p.histogram, device=device, **grid)
            for key, p in self.points.items()}
        self.enabled = True
        self._handles = []
        for key, p in self.points.items():
            module = model.get_submodule(p.module)
            if p.where == "output" and isinstance(module, Wrapper):
                module = unwrap(module)
            self._handles.append(module.register_forward_hook(self._hook(key, p)))

    def _hook(self, key: str, p: Point):
        sketch = self.sketches[key]

        def hook(module, args, output):
            if not self.enabled:
                return
            x = args[0] if p.where == "input" else output
            if p.out_slice is not None:
                x = x[..., p.out_slice[0]:p.out_slice[1]]
            sketch.update(x)
        return hook

    def offload(self, prefix: str, device="cpu") -> None:
        """Move the sketches of points whose module starts with `prefix` (a finished decoder
        layer, e.g. ``"model.layers.3."``) to `device`, freeing accelerator memory."""
        for key, p in self.points.items():
            if p.module.startswith(prefix):
                self.sketches[key].to(device)

    def close(self) -> dict[str, ActivationSketch]:
        for h in self._handles:
            h.remove()
        self._handles = []
        return self.sketches

    def __enter__(self) -> SketchCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LayerSketches:
    """Sketches of every point any activation method reads (`calibration_points`), one
    collector per decoder layer, so a finished layer's sketches can be written out and freed
    (`take_layer`) while the sequential engine moves on: what `sparsekit calibrate
    --activations` stores next to the input statistics."""

    def __init__(self, model: nn.Module, *, device=None, **grid):
        path, layers = decoder_layers(model)
        points = calibration_points(model)
        self._collectors: dict[int, SketchCollector] = {}
        for i in range(len(layers)):
            prefix = f"{path}.{i}."
            mine = {k: p for k, p in points.items() if p.module.startswith(prefix)}
            if mine:
                self._collectors[i] = SketchCollector(model, mine, device=device, **grid)

    def take_layer(self, index: int) -> dict[str, torch.Tensor]:
        """The flat tensors (`sketch_tensors` names) of layer `index`; its hooks are removed."""
        col = self._collectors.pop(index, None)
        return {} if col is None else sketch_tensors(col.close())

    def close(self) -> None:
        for col in self._collectors.values():
            col.close()
        self._collectors.clear()

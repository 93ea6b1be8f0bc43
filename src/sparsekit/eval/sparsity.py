"""Measure the weight sparsity a model actually has (zeros in its prunable linear layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsekit.anatomy import CompressedLinear, decoder_layers, layer_modules, linear_kind, prunable_linears


@dataclass
class SparsityReport:
    per_layer: dict[str, tuple[int, int]]   # full name -> (zeros, numel)

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.per_layer.values())

    @property
    def numel(self) -> int:
        return sum(n for _, n in self.per_layer.values())

    @property
    def overall(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def by_kind(self) -> dict[str, float]:
        """Sparsity per layer type ('self_attn.q_proj', 'mlp.down_proj', ...), across layers."""
        acc: dict[str, list[int]] = {}
        for name, (z, n) in self.per_layer.items():
            a = acc.setdefault(linear_kind(name), [0, 0])
            a[0] += z
            a[1] += n
        return {k: z / n for k, (z, n) in acc.items()}



def count_zeros(weight: torch.Tensor) -> int:
    """Exact zeros (-0.0 counts as zero)."""
    return int((weight == 0).sum().item())


def _sparse_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Compressed linears swapped in by the loader (they keep no dense `.weight`)."""
    path, layers = decoder_layers(model)
    return {f"{path}.{i}.{name}": m for i, layer in enumerate(layers)
            for name, m in layer_modules(layer, CompressedLinear).items()}


@torch.no_grad()
def weight_sparsity(model: nn.Module, linears: dict[str, nn.Module] | None = None) -> SparsityReport:
    linears = {**prunable_linears(model), **_sparse_modules(model)} if linears is None else linears
    per_layer = {}
    for name, lin in linears.items():
        w = lin.to_dense_weight() if isinstance(lin, CompressedLinear) else lin.weight
        if w.device.type == "meta":
            continue
        per_layer[name] = (count_zeros(w), w.numel())
    return SparsityReport(dict(sorted(per_layer.items())))

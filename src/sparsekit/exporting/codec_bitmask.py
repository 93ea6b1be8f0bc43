"""The ``bitmask`` export format: compressed-tensors ``sparse-bitmask`` (any sparsity).

A layer is stored as ``.compressed`` [nnz] (its nonzeros), ``.bitmask``, ``.shape`` int64 [2]
and ``.row_offsets`` [N] (layouts in :mod:`sparsekit.exporting.formats`). At load it is decoded,
one layer at a time, into a dense ``nn.Linear`` weight: there is no unstructured sparse kernel.

The reading helpers (`check_shape`, `dense_weight`, `measure`) serve every bitmask layout,
the 2:4 one (:mod:`sparsekit.exporting.codec_sparse24`) too.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsekit.exporting.codec_base import Codec, DecodeError, LayerFacts, StoredLayer
from sparsekit.exporting.formats import BITMASK, compress_bitmask, decompress, unpack_bitmask

__all__ = ["CODEC", "check_shape", "dense_weight", "measure"]


def encode(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    compressed, bitmask, shape, row_offsets = compress_bitmask(weight)
    return {f"{prefix}.compressed": compressed, f"{prefix}.bitmask": bitmask,
            f"{prefix}.shape": shape, f"{prefix}.row_offsets": row_offsets}


def check_shape(prefix: str, parts: dict[str, torch.Tensor], linear: nn.Linear) -> None:
    """The stored ``.shape`` is the 2 values of ``linear``'s weight."""
    shape = parts["shape"]
    if shape.numel() != 2:
        raise DecodeError(f"{prefix}.shape holds {shape.numel()} values, not the 2 of a linear "
                          "weight: export it again")
    n, k = (int(v) for v in shape.reshape(-1).tolist())
    if (n, k) != (linear.out_features, linear.in_features):
        raise DecodeError(f"{prefix} is stored as {n}x{k} but the model expects "
                          f"{linear.out_features}x{linear.in_features}")


def dense_weight(prefix: str, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight the stored parts describe."""
    try:
        return decompress(parts["compressed"], parts["bitmask"], parts["shape"])
    except ValueError as exc:
        raise DecodeError(f"{prefix} cannot be decoded ({exc}): export it again") from None


def build(prefix: str, parts: dict[str, torch.Tensor], linear: nn.Linear) -> nn.Module:
    check_shape(prefix, parts, linear)
    parts = {**parts, "compressed": parts["compressed"].to(linear.weight.dtype)}
    linear.weight = nn.Parameter(dense_weight(prefix, parts), requires_grad=False)
    return linear


def measure(layer: StoredLayer) -> LayerFacts:
    """Kept = the set bits of the bitmask; the dtype is the stored values'."""
    n, k = (int(v) for v in layer.tensor("shape").reshape(-1))
    kept = int(unpack_bitmask(layer.tensor("bitmask"), k).sum())
    return LayerFacts(kept, n * k, layer.dtype("compressed"))


CODEC = Codec(
    "bitmask", "any sparsity, compressed as compressed-tensors sparse-bitmask, decoded to dense "
               "weights when loaded",
    ct_format=BITMASK, parts=("compressed", "bitmask", "shape", "row_offsets"),
    marks=("compressed", "bitmask"), unread=("row_offsets",),
    encode=encode, build=build, measure=measure)

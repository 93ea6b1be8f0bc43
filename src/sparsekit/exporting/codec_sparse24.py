"""The ``sparse24`` export format: compressed-tensors ``sparse-24-bitmask`` (exactly 2:4).

A layer is stored as ``.compressed`` [N, K/2], ``.bitmask`` and ``.shape`` int64 [2, 1]
(layouts in :mod:`sparsekit.exporting.formats`): 9/16 of the dense bytes in 16-bit. A layer
that is not exactly 2:4 is refused, never re-pruned. At load it becomes a
:class:`~sparsekit.runtime.sparse24_linear.Sparse24Linear` straight from the bitmask, with no
dense copy; other tools' groups stored with other than exactly 2 set bits go through a dense
copy, which must be 2:4.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsekit.exporting.codec_base import Codec, DecodeError, Unencodable
from sparsekit.exporting.codec_bitmask import check_shape, dense_weight, measure
from sparsekit.exporting.formats import SPARSE24, bitmask24_to_packed, compress_24, not_24_groups
from sparsekit.kernels.sparse24 import pack_24
from sparsekit.runtime.sparse24_linear import Sparse24Linear

__all__ = ["CODEC"]


def encode(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    bad = not_24_groups(weight)
    if bad:
        raise Unencodable("K not divisible by 4" if bad < 0 else f"{bad} groups")
    compressed, bitmask, shape = compress_24(weight)
    return {f"{prefix}.compressed": compressed, f"{prefix}.bitmask": bitmask,
            f"{prefix}.shape": shape}


def build(prefix: str, parts: dict[str, torch.Tensor], linear: nn.Linear) -> nn.Module:
    check_shape(prefix, parts, linear)
    parts = {**parts, "compressed": parts["compressed"].to(linear.weight.dtype)}
    bias = linear.bias if linear.bias is not None and not linear.bias.is_meta else None
    try:
        packed = bitmask24_to_packed(parts["compressed"], parts["bitmask"], parts["shape"])
    except ValueError:  # another tool's groups with != 2 bits: via dense (checks 2:4)
        dense = dense_weight(prefix, parts)
        try:
            packed = pack_24(dense)
        except ValueError as exc:
            raise DecodeError(f"{prefix} is stored as sparse-24-bitmask but is not 2:4 ({exc}): "
                              "export it again, or as --format bitmask") from None
    return Sparse24Linear.from_packed(packed, bias=bias)


CODEC = Codec(
    "sparse24", "exactly 2:4, compressed as compressed-tensors sparse-24-bitmask: 9/16 of the "
                "16-bit linear bytes, runs on sparsekit's 2:4 kernels",
    ct_format=SPARSE24, structure="2:4", parts=("compressed", "bitmask", "shape"),
    marks=("compressed", "bitmask"), encode=encode, build=build, measure=measure,
    refusal="{count} targeted layer(s) are not exactly 2:4 (a group of 4 input columns with more "
            "than 2 nonzeros): {layers}; prune with --pattern 2:4 or export with --format bitmask "
            "or --format dense")

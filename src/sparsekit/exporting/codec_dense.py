"""The ``dense`` export format: a plain checkpoint whose pruned weights hold their zeros.

Each pruned layer keeps its ``.weight`` as it is; there is no ``quantization_config``, so any
transformers version loads the export, and there is nothing to decode.
"""

from __future__ import annotations

import torch

from sparsekit.exporting.codec_base import Codec, LayerFacts, StoredLayer

__all__ = ["CODEC"]


def encode(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": weight}


def measure(layer: StoredLayer) -> LayerFacts:
    """Kept = the exact nonzeros of the weight."""
    weight = layer.tensor("weight")
    return LayerFacts(int((weight != 0).sum()), weight.numel(), weight.dtype)


CODEC = Codec("dense", "a plain checkpoint with the zeros stored, loadable by any transformers "
                       "version", ct_format="dense", compressed=False, parts=("weight",),
              encode=encode, measure=measure)

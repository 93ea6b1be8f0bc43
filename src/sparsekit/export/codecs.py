"""Export formats: one codec per format, in the ``FORMATS`` registry.

A codec names its compressed-tensors format and says whether its layers are stored compressed
(so loading them needs the codec's runtime module). The writer, the loader and ``sparsekit
info`` look formats up here; adding a format is its codec record plus one registration line.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsekit.export.formats import BITMASK, SPARSE24
from sparsekit.registry import Plugin, Registry

__all__ = ["Codec", "FORMATS"]


@dataclass(frozen=True)
class Codec(Plugin):
    ct_format: str = ""        # the compressed-tensors sparsity format name
    compressed: bool = True    # layers stored compressed (decoded or run by a runtime module at load)


FORMATS: Registry[Codec] = Registry("export format", "--format", (
    Codec("sparse24", "2:4 compressed (compressed-tensors sparse-24-bitmask, 9/16 of the 16-bit linear bytes, "
                      "runs with sparsekit's 2:4 kernels)", ct_format=SPARSE24),
    Codec("bitmask", "unstructured (sparse-bitmask)", ct_format=BITMASK),
    Codec("dense", "a plain checkpoint with zeros", ct_format="dense", compressed=False),
))

"""Export formats: one codec per format, in the ``FORMATS`` registry.

A `Codec` (:mod:`sparsekit.exporting.codec_base`) holds everything format-specific: its
compressed-tensors name, its config-block structure, how it encodes a pruned layer, how the
stored parts become the module that runs it at load time, and what ``sparsekit info`` reads of
it. The writer, the loader and ``describe`` only look formats up here. Adding a format is its
module (``codec_<name>.py`` defining ``CODEC``) plus one line below, or
``FORMATS.register(codec)``.
"""

from __future__ import annotations

from sparsekit.exporting import codec_bitmask, codec_dense, codec_sparse24
from sparsekit.exporting.codec_base import Codec
from sparsekit.registry import Registry

__all__ = ["Codec", "FORMATS"]

FORMATS: Registry[Codec] = Registry("export format", "--format", (
    codec_sparse24.CODEC,
    codec_bitmask.CODEC,
    codec_dense.CODEC,
))

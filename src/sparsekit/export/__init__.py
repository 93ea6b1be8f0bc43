"""Export pruned models as 2:4 (sparse-24-bitmask), unstructured bitmask or dense safetensors
checkpoints with sparsekit metadata, and load them back into runnable models.

``export_model`` writes (:mod:`sparsekit.export.writer`), ``load`` / ``is_export`` /
``describe`` read (:mod:`sparsekit.export.loader`); the tensor codecs are in
:mod:`sparsekit.export.formats`.
"""

from sparsekit.export.loader import describe, is_export, load
from sparsekit.export.writer import FORMATS, export_model

__all__ = ["FORMATS", "describe", "export_model", "is_export", "load"]

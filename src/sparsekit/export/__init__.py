"""Export pruned models as 2:4 (sparse-24-bitmask), unstructured bitmask or dense safetensors
checkpoints with sparsekit metadata, and load them back into runnable models.

``export_model`` writes (:mod:`sparsekit.export.writer`), ``load`` / ``is_export`` /
``describe`` read (:mod:`sparsekit.export.loader`); the tensor codecs are in
:mod:`sparsekit.export.formats`, the directory layout and the cheap integrity check
(``check_safetensors``) in :mod:`sparsekit.export.files`. Names are imported lazily, so
``sparsekit.export.files`` can be used without importing torch.
"""

from __future__ import annotations

_NAMES = {"FORMATS": "writer", "export_model": "writer", "describe": "loader",
          "is_export": "loader", "load": "loader", "check_safetensors": "files"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        from importlib import import_module

        return getattr(import_module(f"sparsekit.export.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'sparsekit.export' has no attribute {name!r}")

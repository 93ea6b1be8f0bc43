"""``sparsekit.json``: the metadata file of every directory sparsekit writes (pruned models and
exports), with one reader and one writer.

Top-level keys written by `sparsekit prune` (`prune_meta`)::

    sparsekit_version, recipe (the recipe's JSON, with calibration, never_pruned, model, dtype,
    versions), layer_sparsity (decoder layer -> target), layer_values (OWL/DLP values or null),
    layers ({linear: {target, achieved, seconds[, swaps][, note]}}), achieved_sparsity,
    [activation (the thresholds file's recipe, see `sparsekit.files.thresholds`)], saved_dtype,
    seconds

`sparsekit export` copies it and adds ``export`` (format, sizes; `export_section`). The file is
JSON with two-space indentation and a final newline.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparsekit.errors import UsageError

__all__ = ["META_FILE", "meta_text", "prune_meta", "read_meta", "write_meta"]

META_FILE = "sparsekit.json"


def read_meta(directory: str | Path, required: bool = False) -> dict | None:
    """The ``sparsekit.json`` of ``directory`` as a dict; None when there is none (a
    UsageError if ``required``). A file that is not a JSON object is a one-line UsageError."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        if required:
            raise UsageError(f"{directory}: no {META_FILE}, so it is not a sparsekit-pruned directory: "
                             "run `sparsekit prune` first")
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise UsageError(f"{path}: not valid JSON: re-run the command that wrote it") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not a JSON object: re-run the command that wrote it")
    return meta


def meta_text(meta: dict) -> str:
    """The exact bytes written for ``meta`` (two-space indented JSON and a newline)."""
    return json.dumps(meta, indent=2) + "\n"


def write_meta(directory: str | Path, meta: dict) -> Path:
    """Write ``meta`` as ``directory/sparsekit.json`` (inside a temporary output directory: the
    atomic writers publish the directory as a whole)."""
    path = Path(directory) / META_FILE
    path.write_text(meta_text(meta))
    return path


def prune_meta(*, version: str, recipe: dict, allocation, layer_values, layers: dict, achieved: float,
               activation: dict | None = None) -> dict:
    """The document `sparsekit prune` writes (before ``saved_dtype`` and ``seconds``, which are
    set as the model is saved)."""
    meta = {"sparsekit_version": version, "recipe": recipe, "layer_sparsity": allocation,
            "layer_values": layer_values, "layers": layers, "achieved_sparsity": achieved}
    if activation is not None:
        meta["activation"] = activation
    return meta

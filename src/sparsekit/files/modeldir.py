"""Write a pruned model directory atomically: build it under a temporary name, move it into place.

The directory is what ``save_pretrained`` writes (config, safetensors weights, tokenizer files)
plus ``sparsekit.json`` (recipe, per-layer results) and, optionally, sparsekit side files
``sparsekit-<name>.safetensors`` (e.g. activation-sparsity thresholds), which transformers
never reads and ``sparsekit export`` copies unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import save_file

from sparsekit.files.atomic import atomic_directory, check_output
from sparsekit.files.meta import write_meta

__all__ = ["write_model_dir"]


def write_model_dir(model, tokenizer, out: str | Path, meta: dict, overwrite: bool = False,
                    side_files: dict | None = None) -> Path:
    """save_pretrained + tokenizer + sparsekit.json (+ side files) into ``out``, all or nothing.

    ``side_files`` maps a file name ``sparsekit-<name>.safetensors`` to ``(tensors, metadata)``
    (a dict of tensors and a str -> str dict, or None). ``out`` is checked first
    (:func:`~sparsekit.files.atomic.check_output`); an existing output is replaced only once the new
    one is complete.
    """
    side_files = side_files or {}
    for name in side_files:
        if not re.fullmatch(r"sparsekit-[A-Za-z0-9_.-]+\.safetensors", name):
            raise ValueError(f"side file {name!r} must be named sparsekit-<name>.safetensors")
    out = check_output(out, overwrite)
    with atomic_directory(out, "prune") as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if side_files:
            for name, (tensors, metadata) in side_files.items():
                save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()},
                          str(tmp / name), metadata=metadata)
        write_meta(tmp, meta)
    return out


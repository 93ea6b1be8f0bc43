"""Write a pruned model directory atomically: build it under a temporary name, move it into place."""

from __future__ import annotations

import json
from pathlib import Path

from sparsekit.atomic import atomic_directory
from sparsekit.errors import UsageError

META_FILE = "sparsekit.json"


def check_output(out: str | Path, overwrite: bool) -> Path:
    """Fail fast (before hours of work) if the output exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise UsageError(f"output {out} already exists: choose another -o or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file: give a directory path for -o")
    return out


def write_model_dir(model, tokenizer, out: str | Path, meta: dict, overwrite: bool = False) -> Path:
    """save_pretrained + tokenizer + sparsekit.json into `out`, all or nothing."""
    out = check_output(out, overwrite)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out

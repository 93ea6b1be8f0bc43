"""Write a pruned model directory atomically: build it under a temporary name, move it into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out

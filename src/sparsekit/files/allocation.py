"""Per-layer sparsities from a JSON allocation file (``--layerwise FILE.json``).

The file maps each decoder layer, by its module name ("model.layers.3") or its bare index
("3"), to a sparsity in [0, 1)::

    {"model.layers.0": 0.45, "model.layers.1": 0.5, "2": 0.55}

The same mapping may sit under the key ``"layer_sparsity"`` of a larger object, so the
``sparsekit.json`` of an earlier run (which records the allocation under that key) can be
given directly, or the directory holding it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from sparsekit.errors import UsageError
from sparsekit.files.meta import META_FILE

__all__ = ["ALLOCATION_KEY", "load_allocation_file"]

ALLOCATION_KEY = "layer_sparsity"  # where sparsekit.json records the per-layer sparsities


def load_allocation_file(path: str | Path, layer_names: Sequence[str]) -> list[float]:
    """Per-layer sparsities, in the order of `layer_names`, from a JSON allocation file.

    `path` is a JSON file (or a directory holding ``sparsekit.json``) in the format of the
    module docstring. Every problem is a one-line UsageError naming the layer and the fix:
    unreadable file, bad JSON, not an object, a name that is neither a layer nor a layer index,
    a layer given twice, a layer missing, a value that is not a number in [0, 1).
    """
    p = Path(path)
    if p.is_dir():
        p = p / META_FILE
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise UsageError(f"allocation file {p} not found: give the path of a JSON file mapping layers to sparsities")
    except OSError as exc:
        raise UsageError(f"cannot read allocation file {p} ({exc.strerror}): check the path and its permissions")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"allocation file {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}): fix the syntax")
    if isinstance(data, dict) and isinstance(data.get(ALLOCATION_KEY), dict):
        data = data[ALLOCATION_KEY]
    if not isinstance(data, dict) or not data:
        raise UsageError(f"allocation file {p} must hold a JSON object mapping layer names to sparsities, "
                         f'such as {{"{layer_names[0] if layer_names else "model.layers.0"}": 0.5}}')
    index = {name: i for i, name in enumerate(layer_names)}
    found: dict[int, float] = {}
    for key, value in data.items():
        k = str(key).strip()
        if k in index:
            i = index[k]
        elif k.isdigit() and int(k) < len(layer_names):
            i = int(k)
        else:
            known = f"{layer_names[0]} .. {layer_names[-1]}" if layer_names else "none"
            raise UsageError(f"allocation file {p}: unknown layer {key!r}: use decoder layer names "
                             f"({known}) or indices 0..{len(layer_names) - 1}")
        if i in found:
            raise UsageError(f"allocation file {p}: layer {layer_names[i]} is given twice: keep one entry")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise UsageError(f"allocation file {p}: sparsity {value!r} for layer {layer_names[i]} is not a "
                             f"number in [0, 1): give a fraction such as 0.5")
        found[i] = float(value)
    missing = [layer_names[i] for i in range(len(layer_names)) if i not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(f"allocation file {p}: no sparsity for layer {missing[0]}{more}: add an entry for "
                         f"every decoder layer")
    return [found[i] for i in range(len(layer_names))]

"""Save and load calibration statistics (one safetensors file), tied to the model they came from.

Tensors are named `<linear full name>/<statistic>`; linears that read the same input (q/k/v,
gate/up) share one set, recorded as aliases. The safetensors metadata holds one JSON document:
format version, the model fingerprint, the calibration settings and the alias map. New kinds of
statistics (e.g. activation-sparsity thresholds) are new tensor names under the same layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from torch import nn

from sparsekit.calibrate.stats import InputStats
from sparsekit.errors import UsageError
from sparsekit.models import decoder_layers

FORMAT = "sparsekit-stats"
VERSION = 1


def fingerprint(model: nn.Module, targets: dict[str, nn.Linear]) -> dict:
    """Architecture, layer count and the name and shape of every target linear, plus a digest."""
    _, layers = decoder_layers(model)
    linears = {name: list(lin.weight.shape) for name, lin in sorted(targets.items())}
    doc = {"architecture": type(model).__name__, "model_type": getattr(model.config, "model_type", ""),
           "layers": len(layers), "linears": linears}
    doc["digest"] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return doc


def save_stats(path: str | Path, stats: dict[str, InputStats], fp: dict, settings: dict) -> None:
    """Write atomically: a temporary file next to `path`, renamed at the end."""
    from safetensors.torch import save_file

    tensors, aliases, owners = {}, {}, {}
    for name, s in stats.items():
        if id(s) in owners:
            aliases[name] = owners[id(s)]
            continue
        owners[id(s)] = name
        for key, t in s.state_dict().items():
            tensors[f"{name}/{key}"] = t.detach().cpu().contiguous()
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fp, "settings": settings, "aliases": aliases}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"sparsekit": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_header(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--stats {path}: no such file: make one with `sparsekit calibrate MODEL -o {path.name}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("sparsekit", "{}"))
    except Exception:
        meta = {}
    if meta.get("format") != FORMAT:
        raise UsageError(f"--stats {path}: not a sparsekit statistics file: make one with `sparsekit calibrate`")
    return meta


def load_stats(path: str | Path, fp: dict, names: list[str], need_hessian: bool = False,
               device=None) -> tuple[dict[str, InputStats], dict]:
    """Statistics for `names`, checked against the model's fingerprint. Returns (stats, settings)."""
    from safetensors import safe_open

    meta = read_header(path)
    theirs = meta["fingerprint"]
    if (theirs.get("architecture"), theirs.get("layers")) != (fp["architecture"], fp["layers"]):
        raise UsageError(f"--stats {path} was computed on another model ({theirs.get('architecture')}, "
                         f"{theirs.get('layers')} layers; this is {fp['architecture']}, {fp['layers']} layers): "
                         "recalibrate with `sparsekit calibrate` on this model")
    aliases = meta.get("aliases", {})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        present = {k.rsplit("/", 1)[0] for k in keys} | set(aliases)
        missing = [n for n in names if n not in present]
        if missing:
            raise UsageError(f"--stats {path} has no statistics for {len(missing)} layer(s), e.g. {missing[0]}: "
                             "recalibrate with the same --targets/--ignore, or drop --stats")
        wrong = [n for n in names if n in theirs.get("linears", {}) and theirs["linears"][n] != fp["linears"].get(n)]
        if wrong:
            raise UsageError(f"--stats {path} was computed on another model: {wrong[0]} has shape "
                             f"{theirs['linears'][wrong[0]]}, here {fp['linears'].get(wrong[0])}: recalibrate")
        if need_hessian and f"{aliases.get(names[0], names[0])}/hessian" not in keys:
            raise UsageError(f"--stats {path} has no Hessians, which sparsegpt needs: "
                             "recalibrate with `sparsekit calibrate --hessian`")
        out, loaded = {}, {}
        for name in names:
            owner = aliases.get(name, name)
            if owner not in loaded:
                state = {k.rsplit("/", 1)[1]: f.get_tensor(k) for k in keys if k.rsplit("/", 1)[0] == owner}
                loaded[owner] = InputStats.from_state_dict(state, device=device)
            out[name] = loaded[owner]
    return out, meta.get("settings", {})

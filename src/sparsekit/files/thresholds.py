"""Activation-sparsity thresholds on disk, next to the model weights (and the names of activation
sketches inside a statistics file).

File ``sparsekit-activation.safetensors`` in the model directory. Plain transformers never reads
it (it reads ``model.safetensors`` or the files of its index), so the directory still loads as an
ordinary dense model; sparsekit installs the thresholds at load time.

Tensors (float32, CPU, written and read back bit for bit)::

    <module>.threshold   []  or [C]   the site's threshold (C = channels it masks)
    <module>.scale       [C]          optional importance weights (WINA: the column norms
                                      ||W[:, i]||_2 of that linear)

``<module>`` is the full name of the wrapped module (``model.layers.0.self_attn.q_proj``,
``model.layers.0.mlp.act_fn``). The recipe is stored twice: in the file's safetensors metadata
(key ``sparsekit``, so the file is self-describing) and as the ``activation`` section of
sparsekit.json::

    {"format": "sparsekit-activation", "version": 1, "file": "sparsekit-activation.safetensors",
     "method": "teal" | "chess" | "wina", "target": 0.5, "allocation": "uniform" | "greedy",
     "mode": "all" | "decode", "calibration": {...},
     "sites": {"<module>": {"where": "input" | "output", "role": "attn_in", "sparsity": 0.5,
                            "calibrated": 0.5001, "bounds": [0.49, 0.51]}, ...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from safetensors import safe_open

from sparsekit.activation.sketch import ActivationSketch
from sparsekit.errors import UsageError

__all__ = [
    "ACTIVATION_FILE",
    "FORMAT",
    "SKETCH_TAG",
    "VERSION",
    "activation_file",
    "load_activation",
    "sketch_tensors",
    "sketches_from_tensors",
]

ACTIVATION_FILE = "sparsekit-activation.safetensors"
FORMAT = "sparsekit-activation"
VERSION = 1
_SUFFIXES = (".threshold", ".scale")
SKETCH_TAG = "/act."   # statistics-file names: <point key>/act.<field>, e.g. ...q_proj/act.counts


def _check_tensors(tensors: dict[str, torch.Tensor], sites: dict) -> None:
    for key, t in tensors.items():
        if not key.endswith(_SUFFIXES):
            raise ValueError(f"activation tensor names end in .threshold or .scale, got {key!r}")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() > 1:
            raise ValueError(f"activation tensor {key!r} must be a float32 scalar or vector")
    for name in sites:
        if f"{name}.threshold" not in tensors:
            raise ValueError(f"site {name!r} has no threshold tensor")


def activation_file(tensors: dict[str, torch.Tensor], section: dict) -> tuple[dict, dict, dict[str, str]]:
    """(full section, tensors, safetensors metadata) of the thresholds file, checked: what a
    model-directory writer takes as the side file ``sparsekit-activation.safetensors``."""
    section = {"format": FORMAT, "version": VERSION, "file": ACTIVATION_FILE, **section}
    _check_tensors(tensors, section.get("sites") or {})
    data = {k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}
    return section, data, {"sparsekit": json.dumps(section)}


def load_activation(directory: str | Path, section: dict | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, section) of `directory`, or None when it has no thresholds. `section` (the
    ``activation`` section of sparsekit.json, if any) must agree with the file's own recipe."""
    path = Path(directory) / ACTIVATION_FILE
    if not path.is_file():
        if section:
            raise UsageError(f"{directory}: sparsekit.json describes activation sparsity but "
                             f"{ACTIVATION_FILE} is missing: copy it from the pruned model directory")
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            own = json.loads((f.metadata() or {}).get("sparsekit", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the same user error
        raise UsageError(f"{path}: cannot read the activation thresholds ({exc}): re-run "
                         "`sparsekit prune --activation ...`") from None
    if own.get("format") != FORMAT:
        raise UsageError(f"{path}: not a sparsekit activation-thresholds file")
    if int(own.get("version", 0)) > VERSION:
        raise UsageError(f"{path}: format version {own.get('version')} is newer than this sparsekit "
                         f"reads ({VERSION}): upgrade sparsekit")
    if section:
        for key in ("method", "sites"):
            if key in section and section[key] != own.get(key):
                raise UsageError(f"{directory}: the activation section of sparsekit.json does not match "
                                 f"{ACTIVATION_FILE} ({key} differs): re-run `sparsekit prune --activation ...`")
    try:
        _check_tensors(tensors, own.get("sites") or {})
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}: re-run `sparsekit prune --activation ...`") from None
    return tensors, own


def sketch_tensors(sketches: dict) -> dict[str, torch.Tensor]:
    """Flat tensors of activation sketches for the calibration statistics file, named
    ``<point key>/act.<field>`` (fields of `ActivationSketch.state_dict`), on the CPU."""
    out = {}
    for key, sk in sketches.items():
        for field, t in sk.state_dict().items():
            out[f"{key}{SKETCH_TAG}{field}"] = t.detach().to("cpu").contiguous()
    return out


def sketches_from_tensors(tensors: dict[str, torch.Tensor], device=None) -> dict:
    """Inverse of `sketch_tensors`; tensors without the ``/act.`` tag are ignored."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        key, tag, field = name.rpartition(SKETCH_TAG)
        if tag:
            grouped.setdefault(key, {})[field] = t
    return {key: ActivationSketch.from_state_dict(d, device=device) for key, d in grouped.items()}

"""Load whatever a user names: a model (`models.load_model`) or a compressed sparsekit export
(`export.load`, with its sparse runtime modules). The one place that knows both, so that
`models` stays free of the export code."""

from __future__ import annotations

from pathlib import Path

from sparsekit.errors import UsageError
from sparsekit.models import LoadedModel, load_model, resolve_device, resolve_dtype


def load_any(spec: str, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False,
             tokenizer: bool = True, offload: bool = False, for_pruning: bool = False,
             activation: str | None = "auto") -> LoadedModel:
    """`models.load_model`, or `sparsekit.load` for a sparse24/bitmask export directory.

    Activation-sparsity thresholds saved in a model directory are installed (`activation`:
    "auto" = the recorded mode, "all", "decode", or "off"), except when loading for pruning or
    calibration, which work on the plain weights."""
    import json

    from sparsekit.export.loader import META_FILE, install_saved_activation, is_export, load

    if Path(spec).is_dir() and is_export(spec) in ("sparse24", "bitmask"):
        if for_pruning:
            raise UsageError(f"{spec} is a compressed export: prune or calibrate the model directory it was "
                             "exported from (or a --format dense export)")
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        model, tok = load(spec, device=dev, dtype=None if torch_dtype == "auto" else torch_dtype,
                          trust_remote_code=trust_remote_code, activation=activation)
        return LoadedModel(model, tok if tokenizer else None, spec, spec, "export")
    loaded = load_model(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                        tokenizer=tokenizer, offload=offload, for_pruning=for_pruning)
    meta = Path(loaded.path) / META_FILE if loaded.path else None
    if meta is not None and meta.is_file():
        try:
            loaded.model.sparsekit_meta = json.loads(meta.read_text())
        except ValueError:
            raise UsageError(f"{meta}: not valid JSON: re-run the command that wrote it") from None
        if not for_pruning:
            install_saved_activation(loaded.model, loaded.path, activation)
    return loaded

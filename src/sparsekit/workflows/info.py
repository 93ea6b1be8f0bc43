"""`sparsekit info` as a library call: what a model is (architecture, decoder layers, linear
shapes, parameters, weight sparsity) or what an export holds (format, sizes, sparsity, recipe),
without changing anything."""

from __future__ import annotations

from pathlib import Path

from sparsekit.anatomy import decoder_layers, layer_linears, parameter_count
from sparsekit.eval.sparsity import weight_sparsity
from sparsekit.exporting.codecs import FORMATS
from sparsekit.dtypes import dtype_name
from sparsekit.exporting.loader import describe, is_export
from sparsekit.files.atomic import stale_in
from sparsekit.loading import LoadedModel
from sparsekit.workflows.common import Progress, check_load_options, check_model, load, model_dtype

__all__ = ["info"]


def info(model: str | LoadedModel, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
         progress: Progress | None = None) -> dict:
    """A description of ``model`` as plain JSON values.

    A compressed export is described from its files (keys: model, format, files, total_bytes,
    weight_bytes, linear_bytes, linear_dense_bytes, linear_ratio, compressed_layers, sparsity,
    dtype, recipe); anything else is loaded (model, architecture, model_type, dtype, layers,
    layers_path, parameters, linears {type: {shape_out_in, sparsity}}, linear_sparsity; and for a
    directory sparsekit wrote, its recipe and activation thresholds). ``dtype`` is the dtype the
    weights are stored in. Temporaries that interrupted runs left beside ``model`` are listed
    (``stale_temporaries``: path and bytes); the next run to that output removes them."""
    check_load_options(dtype, device)
    check_model(model)
    stale = stale_in(Path(model).expanduser().absolute().parent) if isinstance(model, str) else []
    facts = _describe(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, progress=progress)
    if stale:
        facts["stale_temporaries"] = [{"path": str(p), "bytes": n} for p, n in stale]
    return facts


def _describe(model, *, dtype, device, trust_remote_code, progress) -> dict:
    if isinstance(model, str):
        fmt = is_export(model) if Path(model).is_dir() else None
        if fmt is not None and FORMATS[fmt].compressed:
            facts = describe(model)
            meta = facts.pop("sparsekit_meta") or {}
            return {"model": model, **facts, "recipe": meta.get("recipe")}
    loaded, _ = load(model, progress=progress, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                     tokenizer=False)
    m = loaded.model
    path, layers = decoder_layers(m)
    shapes = {name: tuple(lin.weight.shape) for name, lin in layer_linears(layers[0]).items()}
    report = weight_sparsity(m)
    by_kind = report.by_kind()
    stored = dtype_name(loaded.checkpoint_dtype) if loaded.checkpoint_dtype is not None else model_dtype(m)
    facts = {"model": str(loaded.source), "architecture": type(m).__name__,
             "model_type": m.config.model_type, "dtype": stored, "layers": len(layers), "layers_path": path,
             "parameters": parameter_count(m),
             "linears": {k: {"shape_out_in": list(v), "sparsity": by_kind.get(k, 0.0)} for k, v in shapes.items()},
             "linear_sparsity": report.overall}
    meta = loaded.meta or {}
    if meta.get("recipe"):
        facts["recipe"] = meta["recipe"]
    if meta.get("activation"):
        act = meta["activation"]
        facts["activation"] = {"method": act.get("method"), "target": act.get("target"), "mode": act.get("mode"),
                               "sites": len(act.get("sites") or {})}
    return facts

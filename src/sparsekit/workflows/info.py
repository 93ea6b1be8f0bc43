"""`sparsekit info` as a library call: what a model is (architecture, decoder layers, linear
shapes, parameters, weight sparsity) or what an export holds (format, sizes, sparsity, recipe),
without changing anything."""

from __future__ import annotations

from pathlib import Path

from sparsekit.anatomy import decoder_layers, layer_linears, parameter_count
from sparsekit.eval.sparsity import weight_sparsity
from sparsekit.export.codecs import FORMATS
from sparsekit.export.loader import describe, is_export
from sparsekit.loading import LoadedModel
from sparsekit.workflows.common import Progress, check_load_options, check_model, load, model_dtype

__all__ = ["info"]


def info(model: str | LoadedModel, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
         progress: Progress | None = None) -> dict:
    """A description of ``model`` as plain JSON values.

    A compressed export is described from its files (keys: model, format, files, total_bytes,
    weight_bytes, linear_bytes, linear_dense_bytes, linear_ratio, compressed_layers, sparsity,
    dtype, recipe); anything else is loaded (model, architecture, model_type, dtype, layers,
    layers_path, parameters, linears {type: {shape_out_in, sparsity}}, linear_sparsity)."""
    check_load_options(dtype, device)
    check_model(model)
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
    return {"model": str(loaded.source), "architecture": type(m).__name__,
            "model_type": m.config.model_type, "dtype": model_dtype(m), "layers": len(layers), "layers_path": path,
            "parameters": parameter_count(m),
            "linears": {k: {"shape_out_in": list(v), "sparsity": by_kind.get(k, 0.0)} for k, v in shapes.items()},
            "linear_sparsity": report.overall}

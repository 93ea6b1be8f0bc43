"""Load what ``export_model`` writes (and plain pruned directories) into a runnable model.

The format comes from the compressed-tensors block of config.json (or the ``export`` section
of ``sparsekit.json``) and names a codec (:mod:`sparsekit.exporting.codecs`). In a compressed
format, every layer stored as the codec's parts becomes the module its codec builds (sparse24:
a :class:`~sparsekit.runtime.sparse24_linear.Sparse24Linear` straight from the bitmask;
bitmask: a dense ``nn.Linear`` weight), one layer at a time. Uncompressed exports and plain
directories load with an ordinary ``from_pretrained``.

Other tools' compressed-tensors checkpoints load too when they are sparse-only (what each
codec accepts of them is in its module): the block may sit under ``compression_config``
(compressed-tensors 0.4-0.6) instead of ``quantization_config``. Quantized checkpoints
(``config_groups`` as an object) are refused; sparsekit's own exports carry the string marker
:data:`~sparsekit.exporting.writer.LOAD_HINT` there (see :mod:`sparsekit.exporting.writer`).
Every safetensors file is checked first (:func:`~sparsekit.files.layout.check_safetensors`),
so a truncated file is one line naming it, not a traceback.

Compressed checkpoints are built weightless on the meta device (accelerate's
``init_empty_weights``; buffers such as rotary frequencies stay real), then every stored
tensor is assigned in place as it is read, so memory holds the model once.

Metadata (``sparsekit.json``), the tokenizer and saved activation thresholds are added by
:func:`sparsekit.loading.load`, which returns them with the model in one value.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from sparsekit.anatomy import set_submodule
from sparsekit.dtypes import DTYPES
from sparsekit.errors import UsageError
from sparsekit.exporting.codec_base import Codec, DecodeError
from sparsekit.exporting.codecs import FORMATS
from sparsekit.files.layout import ST_DTYPES, check_safetensors, weight_files
from sparsekit.files.meta import META_FILE, read_meta

__all__ = ["describe", "is_export", "load_export", "load_tokenizer"]



def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ct_block(config: dict) -> dict | None:
    block = config.get("quantization_config") or config.get("compression_config")
    if isinstance(block, dict) and (block.get("quant_method") == "compressed-tensors"
                                    or "compression_config" in config):
        return block
    return None


def is_export(path: str | Path) -> str | None:
    """The format (a name in ``FORMATS``) of a sparsekit or compressed-tensors export, else None."""
    path = Path(path)
    config = _json(path / "config.json") or {}
    block = _ct_block(config)
    if block is not None:
        fmt = (block.get("sparsity_config") or {}).get("format")
        for name, codec in FORMATS.items():
            if codec.ct_format == fmt:
                return name
    meta = _json(path / META_FILE) or {}  # a damaged file is reported by read_meta on loading
    export = meta.get("export")
    if isinstance(export, dict) and export.get("format") in FORMATS:
        return export["format"]
    return None


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise UsageError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def _stored_layers(codec: Codec, keys: set[str]) -> set[str]:
    """The prefixes stored as ``codec``'s parts: every one of its marking parts is present."""
    first, *rest = codec.layer_marks
    prefixes = {k[: -len(first) - 1] for k in keys if k.endswith(f".{first}")}
    return {p for p in prefixes if all(f"{p}.{part}" in keys for part in rest)}


def _check_parts(path: Path, codec: Codec, prefix: str, where: dict[str, Path]) -> None:
    """Every part the codec reads of a stored layer is there."""
    for part in codec.needed_parts:
        if f"{prefix}.{part}" not in where:
            marks = " and ".join(f".{m}" for m in codec.layer_marks)
            raise UsageError(f"{path}: {prefix} has {marks} but no .{part} tensor: export it again")


def _key_index(path: Path) -> dict[str, Path]:
    """tensor name -> safetensors file holding it."""
    index = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as f:
            index.update({k: file for k in f.keys()})
    return index


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> bool:
    """Put ``tensor`` in place of parameter/buffer ``key``, in that slot's dtype."""
    module_name, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return False
    if attr in module._parameters and module._parameters[attr] is not None:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(tensor.to(old.dtype), requires_grad=False)
    elif attr in module._buffers and module._buffers[attr] is not None:
        old = module._buffers[attr]
        module._buffers[attr] = tensor.to(old.dtype) if tensor.is_floating_point() else tensor
    else:
        return False
    return True


def _load_compressed(path: Path, fmt: str, dtype: torch.dtype | None, trust_remote_code: bool):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    block = getattr(config, "quantization_config", None) or getattr(
        config, "compression_config", None) or {}
    if isinstance(block, dict) and isinstance(block.get("config_groups"), dict) \
            and block["config_groups"]:
        raise UsageError(f"{path}: a quantized compressed-tensors checkpoint (config_groups): "
                         "sparsekit loads sparse-only 16/32-bit checkpoints; load it with "
                         "compressed-tensors instead")
    for attr in ("quantization_config", "compression_config"):
        if hasattr(config, attr):
            delattr(config, attr)
    if dtype is None:
        stored = str(getattr(config, "dtype", None) or "float32").replace("torch.", "")
        dtype = _resolve_dtype(stored)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    codec = FORMATS[fmt]
    where = _key_index(path)
    prefixes = _stored_layers(codec, set(where)) if codec.build is not None else set()
    stored = {f"{prefix}.{part}" for prefix in prefixes for part in codec.parts}
    unexpected = []
    for file in sorted(set(where.values())):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key in stored:
                    continue
                if not _assign(model, key, f.get_tensor(key)):
                    unexpected.append(key)
    for prefix in sorted(prefixes):
        linear = model.get_submodule(prefix)
        if not isinstance(linear, nn.Linear):
            raise UsageError(f"{path}: compressed tensor {prefix} is not a linear layer of "
                             f"{type(model).__name__}")
        _check_parts(path, codec, prefix, where)
        parts = {}
        for part in codec.needed_parts:
            with safe_open(str(where[f"{prefix}.{part}"]), framework="pt") as f:
                parts[part] = f.get_tensor(f"{prefix}.{part}")
        try:
            module = codec.build(prefix, parts, linear)
        except DecodeError as exc:
            raise UsageError(f"{path}: {exc}") from None
        if module is not linear:
            set_submodule(model, prefix, module)
    model.tie_weights()
    if unexpected:
        warnings.warn(f"{path}: {len(unexpected)} stored tensor(s) not used by the model, "
                      f"e.g. {unexpected[0]}", stacklevel=3)
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise UsageError(f"{path}: the checkpoint lacks {len(missing)} tensor(s) the model "
                         f"needs, e.g. {missing[0]}")
    gen = path / "generation_config.json"
    if gen.exists():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved in an export directory, or None when it has none."""
    path = Path(path)
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_export(path: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None,
                trust_remote_code: bool = False) -> nn.Module:
    """The model of an exported (or plain pruned) directory, in eval mode on ``device``: the
    compressed layers as their codec's runtime modules. ``dtype`` None keeps the checkpoint's.
    (`sparsekit.load` adds the tokenizer, the metadata and the saved activation thresholds.)"""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory: give an exported or pruned model directory")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: no config.json: give an exported or pruned model directory")
    check_safetensors(path)
    torch_dtype = _resolve_dtype(dtype)
    fmt = is_export(path)
    config = _json(path / "config.json") or {}
    if _ct_block(config) is not None:
        if fmt is None:
            raise UsageError(f"{path}: compressed-tensors checkpoint without a sparse format "
                             "sparsekit can read")
        model = _load_compressed(path, fmt, torch_dtype, trust_remote_code)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype or "auto", trust_remote_code=trust_remote_code)
    model.eval()
    model.to(device)
    return model


class _Layer:
    """One stored layer, read part by part from the files holding it (a `StoredLayer`)."""

    def __init__(self, prefix: str, where: dict[str, Path]):
        self.prefix, self.where = prefix, where

    def _slice(self, part: str, read):
        key = f"{self.prefix}.{part}"
        with safe_open(str(self.where[key]), framework="pt") as f:
            return read(f, key)

    def tensor(self, part: str) -> torch.Tensor:
        return self._slice(part, lambda f, key: f.get_tensor(key))

    def dtype(self, part: str) -> torch.dtype:
        code = self._slice(part, lambda f, key: f.get_slice(key).get_dtype())
        return getattr(torch, ST_DTYPES[code][0])

    def nbytes(self, part: str) -> int:
        shape, code = self._slice(part, lambda f, key: (f.get_slice(key).get_shape(),
                                                         f.get_slice(key).get_dtype()))
        numel = 1
        for d in shape:
            numel *= d
        return numel * ST_DTYPES[code][1]


def describe(path: str | Path) -> dict:
    """On-disk facts about an export, for ``sparsekit info``.

    Keys: format, files, total_bytes (every file in the directory), weight_bytes (the
    safetensors files), linear_bytes (all stored tensors of the compressed or pruned
    layers), linear_dense_bytes (their dense size in the stored dtype), linear_ratio,
    compressed_layers, sparsity (the fraction of weights not kept over those layers, as the
    codec counts them: unset bitmask bits, a 2:4 slot kept as an explicit zero counting as
    kept; for dense exports, exact zeros of the pruned layers' weights), dtype, and
    sparsekit_meta (the sparsekit.json dict or None).
    """
    path = Path(path)
    fmt = is_export(path)
    if fmt is None:
        raise UsageError(f"{path}: not an exported model (no compressed-tensors sparsity "
                         "config and no export section in sparsekit.json)")
    check_safetensors(path)
    meta = read_meta(path)
    files = weight_files(path)
    where = _key_index(path)
    codec = FORMATS[fmt]
    if codec.compressed:  # found by their parts (other tools' checkpoints have no sparsekit.json)
        prefixes = _stored_layers(codec, set(where))
    else:  # plain weights: the pruned layers sparsekit.json names
        prefixes = {name for name in (meta or {}).get("layers") or {}
                    if all(f"{name}.{part}" in where for part in codec.parts)}
    linear = dense = kept = numel = 0
    dtype = None
    for prefix in sorted(prefixes):
        _check_parts(path, codec, prefix, where)
        layer = _Layer(prefix, where)
        linear += sum(layer.nbytes(part) for part in codec.parts if f"{prefix}.{part}" in where)
        facts = codec.measure(layer)
        dense += facts.numel * facts.dtype.itemsize
        kept += facts.kept
        numel += facts.numel
        dtype = str(facts.dtype).replace("torch.", "")
    layers = len(prefixes) if codec.compressed else 0
    return {
        "format": fmt,
        "files": len(files),
        "total_bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        "weight_bytes": sum(p.stat().st_size for p in files),
        "linear_bytes": linear,
        "linear_dense_bytes": dense,
        "linear_ratio": linear / dense if dense else None,
        "compressed_layers": layers,
        "sparsity": 1 - kept / numel if numel else None,
        "dtype": dtype,
        "sparsekit_meta": meta,
    }

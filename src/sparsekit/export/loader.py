"""Load what ``export_model`` writes (and plain pruned directories) into a runnable model.

* ``sparse24``: every compressed linear becomes a
  :class:`~sparsekit.runtime.sparse24_linear.Sparse24Linear`, converted straight from the bitmask
  (no dense copy of the layer, let alone of the model);
* ``bitmask``: compressed linears are decoded, one at a time, into dense ``nn.Linear``
  weights (there is no unstructured sparse kernel);
* ``dense`` exports and plain directories: an ordinary ``from_pretrained``.

Other tools' compressed-tensors checkpoints load too when they are sparse-only: the block may
sit under ``compression_config`` (compressed-tensors 0.4-0.6) instead of
``quantization_config``, and 2:4 groups stored with other than exactly 2 set bits are decoded
through a dense copy and checked to be 2:4. Quantized checkpoints (``config_groups`` as an
object) are refused; sparsekit's own exports carry the string marker
:data:`~sparsekit.export.writer.LOAD_HINT` there (see :mod:`sparsekit.export.writer`).
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
from sparsekit.export.codecs import FORMATS
from sparsekit.export.formats import bitmask24_to_packed, decompress, unpack_bitmask
from sparsekit.files.layout import check_safetensors, weight_files
from sparsekit.files.meta import read_meta
from sparsekit.kernels.sparse24 import pack_24
from sparsekit.runtime.sparse24_linear import Sparse24Linear

__all__ = ["describe", "is_export", "load_export", "load_tokenizer"]

_BY_CT_FORMAT = {codec.ct_format: name for name, codec in FORMATS.items()}
_PARTS = ("compressed", "bitmask", "shape", "row_offsets")
# safetensors dtype code -> (torch name, bytes per element)
_ST_DTYPES = {"BF16": ("bfloat16", 2), "F16": ("float16", 2), "F32": ("float32", 4),
              "F64": ("float64", 8), "I64": ("int64", 8), "I32": ("int32", 4),
              "I16": ("int16", 2), "U8": ("uint8", 1), "I8": ("int8", 1), "BOOL": ("bool", 1),
              "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1)}


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
    """"sparse24", "bitmask" or "dense" for a sparsekit or compressed-tensors export, else None."""
    path = Path(path)
    config = _json(path / "config.json") or {}
    block = _ct_block(config)
    if block is not None:
        fmt = (block.get("sparsity_config") or {}).get("format")
        if fmt in _BY_CT_FORMAT:
            return _BY_CT_FORMAT[fmt]
    meta = _json(path / "sparsekit.json") or {}  # a damaged file is reported by read_meta on loading
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


def _compressed_prefixes(keys: set[str]) -> set[str]:
    return {k[: -len(".bitmask")] for k in keys
            if k.endswith(".bitmask") and k[: -len(".bitmask")] + ".compressed" in keys}


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
    where = _key_index(path)
    prefixes = _compressed_prefixes(set(where))
    unexpected = []
    for file in sorted(set(where.values())):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                prefix, _, part = key.rpartition(".")
                if prefix in prefixes and part in _PARTS:
                    continue
                if not _assign(model, key, f.get_tensor(key)):
                    unexpected.append(key)
    for prefix in sorted(prefixes):
        linear = model.get_submodule(prefix)
        if not isinstance(linear, nn.Linear):
            raise UsageError(f"{path}: compressed tensor {prefix} is not a linear layer of "
                             f"{type(model).__name__}")
        parts = {}
        for part in _PARTS[:3]:
            if f"{prefix}.{part}" not in where:
                raise UsageError(f"{path}: {prefix} has .compressed and .bitmask but no .{part} "
                                 "tensor: export it again")
            with safe_open(str(where[f"{prefix}.{part}"]), framework="pt") as f:
                parts[part] = f.get_tensor(f"{prefix}.{part}")
        if parts["shape"].numel() != 2:
            raise UsageError(f"{path}: {prefix}.shape holds {parts['shape'].numel()} values, "
                             "not the 2 of a linear weight: export it again")
        n, k = (int(v) for v in parts["shape"].reshape(-1).tolist())
        if (n, k) != (linear.out_features, linear.in_features):
            raise UsageError(f"{path}: {prefix} is stored as {n}x{k} but the model expects "
                             f"{linear.out_features}x{linear.in_features}")
        parts["compressed"] = parts["compressed"].to(linear.weight.dtype)
        bias = linear.bias if linear.bias is not None and not linear.bias.is_meta else None
        if fmt == "sparse24":
            try:
                packed = bitmask24_to_packed(parts["compressed"], parts["bitmask"], parts["shape"])
            except ValueError:  # another tool's groups with != 2 bits: via dense (checks 2:4)
                dense = _decode(path, prefix, parts)
                try:
                    packed = pack_24(dense)
                except ValueError as exc:
                    raise UsageError(f"{path}: {prefix} is stored as sparse-24-bitmask but is "
                                     f"not 2:4 ({exc}): export it again, or as --format "
                                     "bitmask") from None
            set_submodule(model, prefix, Sparse24Linear.from_packed(packed, bias=bias))
        else:
            linear.weight = nn.Parameter(_decode(path, prefix, parts), requires_grad=False)
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


def _decode(path: Path, prefix: str, parts: dict) -> torch.Tensor:
    try:
        return decompress(parts["compressed"], parts["bitmask"], parts["shape"])
    except ValueError as exc:
        raise UsageError(f"{path}: {prefix} cannot be decoded ({exc}): export it again") from None


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


def _nbytes(slice_) -> int:
    numel = 1
    for d in slice_.get_shape():
        numel *= d
    return numel * _ST_DTYPES[slice_.get_dtype()][1]


def describe(path: str | Path) -> dict:
    """On-disk facts about an export, for ``sparsekit info``.

    Keys: format, files, total_bytes (every file in the directory), weight_bytes (the
    safetensors files), linear_bytes (all stored tensors of the compressed or pruned
    layers), linear_dense_bytes (their dense size in the stored dtype), linear_ratio,
    compressed_layers, sparsity (fraction of unset bitmask bits over those layers; a 2:4
    slot kept as an explicit zero counts as kept; for dense exports, exact zeros of the
    pruned layers' weights), dtype, and sparsekit_meta (the sparsekit.json dict or None).
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
    linear = dense = kept = numel = layers = 0
    dtype = None
    if fmt != "dense":
        for prefix in sorted(_compressed_prefixes(set(where))):
            with safe_open(str(where[f"{prefix}.compressed"]), framework="pt") as f:
                comp = f.get_slice(f"{prefix}.compressed")
                dtype, itemsize = _ST_DTYPES[comp.get_dtype()]
            for part in _PARTS:
                if f"{prefix}.{part}" in where:
                    with safe_open(str(where[f"{prefix}.{part}"]), framework="pt") as f:
                        linear += _nbytes(f.get_slice(f"{prefix}.{part}"))
                        if part == "shape":
                            n, k = (int(v) for v in f.get_tensor(f"{prefix}.shape").reshape(-1))
                        if part == "bitmask":
                            bits = f.get_tensor(f"{prefix}.bitmask")
            dense += n * k * itemsize
            kept += int(unpack_bitmask(bits, k).sum())
            numel += n * k
            layers += 1
    else:
        for name in sorted((meta or {}).get("layers") or {}):
            key = f"{name}.weight"
            if key in where:
                with safe_open(str(where[key]), framework="pt") as f:
                    w = f.get_tensor(key)
                dtype = str(w.dtype).replace("torch.", "")
                linear += w.numel() * w.element_size()
                kept += int((w != 0).sum())
                numel += w.numel()
        dense = linear
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

"""Export a pruned model directory in one of the ``FORMATS`` (2:4 or bitmask compressed, or a
plain dense checkpoint).

The input is what ``sparsekit prune`` writes: a Hugging Face model directory (config.json,
safetensors weights with exact zeros, tokenizer files) plus ``sparsekit.json``, whose
``layers`` keys name the pruned linear modules (the *targets*).

The export streams: input tensors are read one at a time with ``safe_open`` and written into
shards of at most ``max_shard_bytes`` (plus an index when there are several), so peak memory
is about one shard plus one layer, never the model twice. Everything is written into a
hidden temporary directory next to ``out_dir`` and moved into place with ``os.replace`` at
the end; any exception (or Ctrl-C) removes it, so an interrupted export leaves no ``out_dir``.

Each target's ``.weight`` is replaced by what its format's codec encodes
(:mod:`sparsekit.exporting.codecs`); a target the codec refuses (sparse24: not exactly 2:4)
stops the export with every such layer named, never re-pruned. Every other tensor is copied.

Compressed formats add a compressed-tensors ``quantization_config`` block to config.json
(:func:`sparsity_block`). No current loader decodes it: compressed-tensors >= 0.15 dropped the
sparse formats and, with transformers 5, loads such a checkpoint *with random weights* in the
compressed layers (only missing-key warnings). So by default the block also carries
``"config_groups": LOAD_HINT``, a string where compressed-tensors expects an object: plain
``from_pretrained`` then fails (ImportError without compressed-tensors; with it, a validation
error that quotes "sparse export: load it with sparsekit.load(path)") instead of running
garbage. ``compressed_tensors_compat=True`` leaves the marker out, for the old stacks that
still decode the format (compressed-tensors <= 0.14: vLLM < 0.19 on SM90, transformers 4.x).
:func:`sparsekit.load` reads both.

Every format copies ``sparsekit.json`` with an added ``export`` section, puts a short JSON
summary under the ``sparsekit`` key of each safetensors file's metadata, and copies the
sparsekit side files (``sparsekit-*.safetensors``) and the tokenizer/generation files
unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsekit.dtypes import DTYPES
from sparsekit.errors import UsageError
from sparsekit.exporting.codec_base import Codec, Unencodable
from sparsekit.exporting.codecs import FORMATS
from sparsekit.files.atomic import atomic_directory, check_output
from sparsekit.files.layout import INDEX_FILE, check_safetensors, side_files, weight_files
from sparsekit.files.meta import META_FILE, read_meta, write_meta
from sparsekit.version import __version__
# The last compressed-tensors release line that can read (decompress) the sparse formats;
# written as the block's "version" because loaders of that era expect the key.
COMPRESSED_TENSORS_VERSION = "0.14.0"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# Where compressed-tensors expects an object: transformers + compressed-tensors refuse the
# checkpoint and quote this string whole (pydantic cuts quoted inputs longer than 50 chars).
LOAD_HINT = "sparse export: load it with sparsekit.load(path)"
Progress = Callable[[int, int, str], None]  # (tensors done, tensors total, tensor name)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None


class ShardWriter:
    """Collects tensors and writes a new shard whenever the next group would not fit."""

    def __init__(self, directory: Path, max_bytes: int, metadata: dict[str, str]):
        self.directory, self.max_bytes, self.metadata = directory, max_bytes, metadata
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # tensor names per written shard
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Add tensors that belong together (one layer's); they go to the same shard."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending.update({k: t.contiguous() for k, t in tensors.items()})
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, str(self.directory / f".shard-{len(self.shards)}"), self.metadata)
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Give the shards their final names (and write the index if several); return them."""
        self.flush()
        count = len(self.shards)
        names = (["model.safetensors"] if count == 1 else
                 [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        for i, name in enumerate(names):
            os.replace(self.directory / f".shard-{i}", self.directory / name)
        if count > 1:
            weight_map = {t: names[i] for i, keys in enumerate(self.shards) for t in keys}
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names


def _linear_names(config_dir: Path) -> list[str]:
    """Names of all nn.Linear modules, from a weightless (meta device) model."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    with init_empty_weights(include_buffers=True):
        model = AutoModelForCausalLM.from_config(config)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def sparsity_block(fmt: str, targets: list[str], all_linears: list[str], global_sparsity: float,
                   structure: str, compat: bool = False) -> dict:
    """The compressed-tensors ``quantization_config`` for a sparse-only checkpoint.

    ``targets`` is ``["Linear"]`` (the class name, as llm-compressor writes it) and ``ignore``
    names every other nn.Linear module exactly (lm_head and any layer left dense), so the
    compressed set is exactly ``targets`` minus ``ignore``. Unless ``compat``, the block also
    has ``"config_groups": LOAD_HINT`` so that loaders which cannot decode it refuse it.
    """
    wanted = set(targets)
    marker = {} if compat else {"config_groups": LOAD_HINT}
    return {
        "quant_method": "compressed-tensors",
        **marker,
        "sparsity_config": {
            "format": fmt,
            "global_sparsity": global_sparsity,
            "ignore": sorted(n for n in all_linears if n not in wanted),
            "registry_requires_subclass": False,
            "sparsity_structure": structure,
            "targets": ["Linear"],
        },
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    }


def check_export_paths(src: str | Path, out: str | Path, overwrite: bool) -> None:
    """Everything about the input and output directories that can be refused before reading a
    tensor: ``src`` is a pruned directory with intact safetensors weights, ``out`` may be
    written (:func:`~sparsekit.files.atomic.check_output`) and does not overlap ``src``."""
    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise UsageError(f"{src}: no config.json: give the directory `sparsekit prune` wrote")
    if not (src / META_FILE).is_file():
        raise UsageError(f"{src}: no {META_FILE}, so it is not a sparsekit-pruned directory: "
                         "run `sparsekit prune` first")
    if not weight_files(src):
        raise UsageError(f"{src}: no model.safetensors (or index): export needs safetensors "
                         "weights")
    check_output(out, overwrite, inputs=[src])
    check_safetensors(src)


def _format_offenders(codec: Codec, offenders: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{name} ({why})" for name, why in offenders[:3])
    more = f" and {len(offenders) - 3} more" if len(offenders) > 3 else ""
    return codec.refusal.format(count=len(offenders), name=codec.name, layers=shown + more)


def export_model(pruned_dir: str | Path, out_dir: str | Path, format: str = "sparse24",
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: str | None = None,
                 overwrite: bool = False, progress: Progress | None = None,
                 compressed_tensors_compat: bool = False) -> dict:
    """Write ``pruned_dir`` to ``out_dir`` in ``format`` (a name in ``FORMATS``).

    ``dtype`` ("bfloat16", "float16", "float32"; None keeps the stored dtype) casts floating
    tensors on the way. ``compressed_tensors_compat`` writes the plain compressed-tensors block
    (see the module doc: loads in compressed-tensors <= 0.14 stacks, but transformers 5 with
    compressed-tensors >= 0.15 would load it with random weights). Returns a summary: format,
    out_dir, shards, tensor_bytes (all tensors), linear_bytes (tensors of the targeted layers,
    as written), linear_dense_bytes (their dense equivalent), layers (pruned layers written,
    any format), compressed_layers (0 for an uncompressed format such as dense),
    global_sparsity, dtype, side_files, compressed_tensors_compat, seconds.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if max_shard_bytes <= 0:
        raise UsageError("max_shard_bytes must be positive")
    src, out = Path(pruned_dir), Path(out_dir)
    codec = FORMATS[format]
    check_export_paths(src, out, overwrite)
    config = _read_json(src / "config.json")
    if config.get("quantization_config") or config.get("compression_config"):
        raise UsageError(f"{src}: already quantized or compressed (config.json has a "
                         "quantization_config): export the directory `sparsekit prune` wrote")
    meta = read_meta(src, required=True)
    targets = sorted(meta.get("layers") or {})
    if not targets and codec.compressed:
        raise UsageError(f"{src}/{META_FILE} lists no pruned layers: nothing to compress")

    start = time.perf_counter()
    files = weight_files(src)
    cast = DTYPES[dtype] if dtype else None
    recipe = meta.get("recipe") or {}
    short = {"sparsekit_version": __version__, "export_format": format,
             "method": recipe.get("method"), "pattern": recipe.get("pattern"),
             "achieved_sparsity": meta.get("achieved_sparsity")}
    st_meta = {"format": "pt", "sparsekit": json.dumps(short, sort_keys=True)}
    weight_keys = {f"{t}.weight" for t in targets}

    with atomic_directory(out, "export") as tmp:
        writer = ShardWriter(tmp, max_shard_bytes, st_meta)
        stats = dict(zeros=0, numel=0, linear=0, linear_dense=0, layers=0, out_dtype=None)
        offenders: list[tuple[str, str]] = []
        present: set[str] = set()
        total = 0
        for path in files:
            with _open(path) as reader:
                total += len(reader.keys())
        done = 0
        for path in files:
            with _open(path) as reader:
                for key in sorted(reader.keys()):
                    present.add(key)
                    tensor = reader.get_tensor(key)
                    if cast is not None and tensor.is_floating_point():
                        tensor = tensor.to(cast)
                    if tensor.is_floating_point():
                        stats["zeros"] += int((tensor == 0).sum())
                        stats["numel"] += tensor.numel()
                    if key in weight_keys:
                        group = _encode_target(key, tensor, codec, offenders, stats)
                    else:
                        group = {key: tensor}
                    if not offenders:
                        writer.add(group)
                    done += 1
                    if progress is not None:
                        progress(done, total, key)
        missing = sorted(weight_keys - present)
        if missing:
            raise UsageError(f"{len(missing)} pruned layer(s) listed in {META_FILE} have no "
                             f"weight in the checkpoint, e.g. {missing[0]}")
        if offenders:
            raise UsageError(_format_offenders(codec, offenders))
        shards = writer.finish()

        global_sparsity = stats["zeros"] / stats["numel"] if stats["numel"] else 0.0
        if codec.compressed:
            try:
                linears = _linear_names(src)
            except Exception:  # custom architectures: fall back to the usual head name
                linears = ["lm_head"]
            config["quantization_config"] = sparsity_block(
                codec.ct_format, targets, linears, global_sparsity,
                codec.sparsity_structure(recipe), compat=compressed_tensors_compat)
        if cast is not None:
            config["dtype"] = dtype
            if "torch_dtype" in config:
                config["torch_dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

        summary = {"format": format, "out_dir": str(out), "shards": len(shards),
                   "tensor_bytes": writer.total_bytes, "linear_bytes": stats["linear"],
                   "linear_dense_bytes": stats["linear_dense"],
                   "layers": stats["layers"],
                   "compressed_layers": stats["layers"] if codec.compressed else 0,
                   "global_sparsity": global_sparsity,
                   "dtype": str(stats["out_dtype"]).replace("torch.", "") if stats["out_dtype"]
                   else None,
                   "side_files": [p.name for p in side_files(src)],
                   "compressed_tensors_compat": bool(compressed_tensors_compat
                                                     and codec.compressed)}
        meta_out = dict(meta)
        meta_out["export"] = {"sparsekit_version": __version__,
                              "compressed_tensors_format": codec.ct_format,
                              **{k: v for k, v in summary.items() if k != "out_dir"}}
        write_meta(tmp, meta_out)
        _copy_side_files(src, tmp, files)
    summary["seconds"] = time.perf_counter() - start
    return summary


def _encode_target(key: str, weight: torch.Tensor, codec: Codec,
                   offenders: list[tuple[str, str]], stats: dict) -> dict[str, torch.Tensor]:
    """The tensors that replace one targeted ``<prefix>.weight``, as ``codec`` encodes them
    (nothing once some layer was refused: the rest are only checked)."""
    prefix = key[: -len(".weight")]
    if weight.dim() != 2:
        raise UsageError(f"pruned layer {prefix} has a {weight.dim()}-D weight; only linear "
                         "layers (2-D weights) can be exported")
    stats["linear_dense"] += weight.numel() * weight.element_size()
    stats["out_dtype"] = weight.dtype
    try:
        group = codec.encode(prefix, weight)
    except Unencodable as exc:
        offenders.append((prefix, str(exc)))
        return {}
    if offenders:  # already refusing
        return {}
    names = {f"{prefix}.{part}" for part in codec.parts}
    if not {f"{prefix}.{part}" for part in codec.needed_parts} <= set(group) <= names:
        raise ValueError(f"export format {codec.name!r} encoded {prefix} as {sorted(group)}, "
                         f"not as its parts {list(codec.parts)}")
    stats["layers"] += 1
    stats["linear"] += sum(t.numel() * t.element_size() for t in group.values())
    return group


def _open(path: Path):
    """``safe_open`` with damage reported as a one-line UsageError."""
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError, OSError
        raise UsageError(f"{path}: cannot read ({exc}): prune again with `sparsekit prune`") \
            from None


def _copy_side_files(src: Path, dst: Path, weights: list[Path]) -> None:
    """Tokenizer, generation config, chat template, README...: every plain file except the
    weights, their index, config.json and sparsekit.json (written fresh); and the sparsekit
    side files ``sparsekit-*.safetensors``, byte for byte."""
    skip = {p.name for p in weights} | {INDEX_FILE, "config.json", META_FILE}
    for item in src.iterdir():
        if (item.is_file() and item.name not in skip and not item.name.startswith(".")
                and not item.name.endswith((".safetensors", ".bin", ".pt", ".pth"))):
            shutil.copy2(item, dst / item.name)
    for item in side_files(src):
        shutil.copyfile(item, dst / item.name)

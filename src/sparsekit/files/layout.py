"""The files of a model directory (the home of the safetensors layout): which safetensors hold the weights, which are sparsekit
side files, and a cheap integrity check (no torch, no tensor data read).

* weights: ``model.safetensors``, or the files named by ``model.safetensors.index.json``;
* side files: ``sparsekit-*.safetensors`` (e.g. activation-sparsity thresholds) beside the
  weights. They are never weights: :func:`weight_files` leaves them out, transformers never
  opens them (it reads only the index or ``model.safetensors``), and ``sparsekit export``
  copies them byte for byte.

A safetensors file is ``u64 little-endian header length n | n bytes of JSON header | data``;
every tensor entry has ``dtype``, ``shape`` and ``data_offsets [start, end)`` relative to the
data section. :func:`check_safetensors` parses the header and compares the file size with
``8 + n + max(end)``, so a truncated copy (or an interrupted write) is found in
microseconds instead of failing with a traceback halfway through loading.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from sparsekit.errors import UsageError
from sparsekit.files.meta import META_FILE

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SIDE_FILE_GLOB = "sparsekit-*.safetensors"
STATS_FORMAT = "sparsekit-stats"  # the "format" of a `sparsekit calibrate` file's metadata
_MAX_HEADER = 100 * 1024**2
# safetensors dtype code -> (the torch dtype's name, bytes per element); sub-byte and unknown
# codes are not listed (their sizes are not checked)
ST_DTYPES = {"BOOL": ("bool", 1), "U8": ("uint8", 1), "I8": ("int8", 1), "F8_E4M3": ("float8_e4m3fn", 1),
             "F8_E5M2": ("float8_e5m2", 1), "F8_E8M0": ("float8_e8m0fnu", 1), "I16": ("int16", 2),
             "U16": ("uint16", 2), "F16": ("float16", 2), "BF16": ("bfloat16", 2), "I32": ("int32", 4),
             "U32": ("uint32", 4), "F32": ("float32", 4), "I64": ("int64", 8), "U64": ("uint64", 8),
             "F64": ("float64", 8), "C64": ("complex64", 8)}


class DamagedFile(ValueError):
    """A safetensors file whose header does not describe the file (truncated, not safetensors)."""


def _read_index(directory: Path) -> dict:
    path = directory / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: unreadable index ({exc}): {_fix_for(directory)}") from None
    return weight_map


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding a model directory's weights (from the index when sharded),
    never the ``sparsekit-*.safetensors`` side files. Empty if there are none."""
    directory = Path(directory)
    if (directory / INDEX_FILE).exists():
        return [directory / n for n in sorted(set(_read_index(directory).values()))]
    single = directory / SINGLE_FILE
    return [single] if single.exists() else []


def side_files(directory: str | Path) -> list[Path]:
    """The sparsekit side files (``sparsekit-*.safetensors``) of a directory, sorted."""
    return sorted(p for p in Path(directory).glob(SIDE_FILE_GLOB) if p.is_file())


def read_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file, after checking that it describes the file exactly
    (size == 8 + header length + end of the last tensor). Raises :class:`DamagedFile`."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedFile(f"only {size} bytes, not even a header")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise DamagedFile("not a safetensors file: its first 8 bytes are no header length")
        if n > size - 8:
            raise DamagedFile(f"the header claims {n} bytes but the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise DamagedFile("the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise DamagedFile("the header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in entry["data_offsets"])
            numel = 1
            for d in entry["shape"]:
                numel *= int(d)
        except (KeyError, TypeError, ValueError):
            raise DamagedFile(f"tensor {name} has no valid shape/data_offsets") from None
        itemsize = ST_DTYPES.get(entry.get("dtype"), (None, None))[1]
        if not 0 <= start <= stop or (itemsize is not None and stop - start != numel * itemsize):
            raise DamagedFile(f"tensor {name} has inconsistent data_offsets {[start, stop]}")
        end = max(end, stop)
    expected = 8 + n + end
    if size < expected:
        raise DamagedFile(f"truncated: {size} bytes of the {expected} its header describes")
    if size > expected:
        raise DamagedFile(f"{size - expected} unexpected bytes after the last tensor")
    return header


def _fix_for(directory: Path) -> str:
    """What re-creates a damaged file of this directory."""
    if not (directory / META_FILE).exists():
        return "download or copy the model again"
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):  # a damaged sparsekit.json is reported by its reader
        meta = None
    if isinstance(meta, dict) and "export" in meta:
        return "export it again with `sparsekit export`"
    return "prune again with `sparsekit prune` (or copy the directory again)"


def check_safetensors(path: str | Path, fix: str | None = None) -> list[Path]:
    """Check a safetensors file, or every safetensors file a model directory uses (the weights,
    the index's file names and tensor lists, the sparsekit side files), without reading tensor
    data. Returns the files checked (none for a directory without safetensors weights).

    Raises a one-line :class:`~sparsekit.errors.UsageError` naming the damaged file and ``fix``
    (default: chosen from the directory: re-export, re-prune, or copy/download again).
    """
    path = Path(path)
    if path.is_dir():
        files = weight_files(path) + side_files(path)
        fix = fix or _fix_for(path)
        indexed = _read_index(path) if (path / INDEX_FILE).exists() else None
    elif path.suffix == ".safetensors":
        files, fix, indexed = [path], fix or "write or copy it again", None
        path = path.parent
    else:
        return []
    headers = {}
    for file in files:
        if not file.is_file():
            raise UsageError(f"{file}: missing, but {INDEX_FILE} lists it: {fix}")
        try:
            headers[file.name] = read_header(file)
        except DamagedFile as exc:
            raise UsageError(f"{file}: damaged safetensors file ({exc}): {fix}") from None
        except OSError as exc:
            raise UsageError(f"{file}: cannot read ({exc.strerror or exc}): {fix}") from None
    if indexed is not None:
        for tensor, name in indexed.items():
            if tensor not in headers[name]:
                raise UsageError(f"{path / name}: lacks tensor {tensor}, which {INDEX_FILE} places "
                                 f"there: {fix}")
    return files


def sparsekit_metadata(path: str | Path) -> dict | None:
    """The JSON under the ``sparsekit`` key of a safetensors file's metadata (None if the file
    is not a readable safetensors file or has no such key)."""
    try:
        meta = read_header(path).get("__metadata__") or {}
        value = json.loads(meta.get("sparsekit", "null"))
    except (OSError, DamagedFile, ValueError, AttributeError):
        return None
    return value if isinstance(value, dict) else None


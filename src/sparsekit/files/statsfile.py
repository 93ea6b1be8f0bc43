"""Save and load calibration statistics (one safetensors file), tied to the exact weights.

Layout (format version 2): a standard safetensors file. Tensors are named
`<linear full name>/<statistic>` (the keys of `InputStats.state_dict`); linears that read the same
input (q/k/v, gate/up) share one set, recorded as aliases. The safetensors metadata key
"sparsekit" holds one JSON document: format, version, the model fingerprint (architecture, layer
count, and per target linear its shape, dtype and a digest of its values), the calibration
settings and the alias map.

Writing streams: `StatsWriter` takes one decoder layer's statistics at a time and writes their
bytes straight to a temporary file next to the target. The header's size is bounded from the
fingerprint (names and shapes of every linear), so that much room is reserved at the start and
the header is written last, padded with spaces (the safetensors format allows trailing
whitespace in the header); if it ever does not fit, the data is copied once behind a larger
header. The temporary file is renamed over the target at the end and removed on any error or
interrupt. Reading is lazy: `load_stats` returns a mapping that reads one linear's statistics
(with its aliases) on demand.

New kinds of statistics are new tensor names under the same linear.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from sparsekit.anatomy import decoder_layers
from sparsekit.calibration.stats import InputStats
from sparsekit.errors import UsageError
from sparsekit.files.atomic import temporary_path
from sparsekit.files.layout import ST_DTYPES, DamagedFile
from sparsekit.files.layout import read_header as safetensors_header
from sparsekit.files.thresholds import SKETCH_TAG, sketches_from_tensors

FORMAT = "sparsekit-stats"
VERSION = 2
DIGEST_SAMPLES = 4096
STATE_KEYS = ("version", "nsamples", "ntokens", "sq_norm", "mean", "m2", "hessian")

# torch dtype -> safetensors code, for the dtypes statistics are stored in
_DTYPES = {getattr(torch, ST_DTYPES[code][0]): code for code in ("F32", "F64", "F16", "BF16", "I64", "I32", "I8",
                                                                  "U8", "BOOL")}


# ------------------------------------------------------------------------------ fingerprint
def weight_digest(weight: torch.Tensor) -> str | None:
    """A cheap digest of a weight's values: sha256 (16 hex digits) of its dtype, its shape and
    the raw bytes of `DIGEST_SAMPLES` elements at the flat indices i * numel // DIGEST_SAMPLES
    (every element when there are fewer). It tells apart different checkpoints, fine-tunes,
    pruned copies and dtypes; it is not a proof that every value is equal. None for a weight
    without values here (on the meta device, e.g. offloaded to disk)."""
    w = weight.detach()
    if w.device.type == "meta":
        return None
    flat = w.reshape(-1)
    n = flat.numel()
    if n > DIGEST_SAMPLES:
        idx = torch.arange(DIGEST_SAMPLES, dtype=torch.int64) * n // DIGEST_SAMPLES
        flat = flat[idx.to(flat.device)]
    raw = flat.cpu().contiguous().view(torch.uint8).numpy().tobytes()
    h = hashlib.sha256(f"{str(w.dtype).replace('torch.', '')}{list(w.shape)}".encode())
    h.update(raw)
    return h.hexdigest()[:16]


def fingerprint(model: nn.Module, targets: dict[str, nn.Linear]) -> dict:
    """Architecture, model type, layer count and, per target linear, its shape, dtype and
    `weight_digest`; plus a digest of the whole document."""
    _, layers = decoder_layers(model)
    linears = {name: {"shape": list(lin.weight.shape), "dtype": str(lin.weight.dtype).replace("torch.", ""),
                      "weights": weight_digest(lin.weight)}
               for name, lin in sorted(targets.items())}
    doc = {"architecture": type(model).__name__, "model_type": getattr(model.config, "model_type", ""),
           "layers": len(layers), "linears": linears}
    doc["digest"] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return doc


def check_fingerprint(theirs: dict, ours: dict, names: list[str], label: str) -> None:
    """Raise a one-line UsageError naming the first difference between the model the file was
    calibrated on (`theirs`) and this one (`ours`) for the linears `names`: architecture or
    layer count, shape, dtype, then weight values."""
    if (theirs.get("architecture"), theirs.get("layers")) != (ours["architecture"], ours["layers"]):
        raise UsageError(f"{label} was computed on another model ({theirs.get('architecture')}, "
                         f"{theirs.get('layers')} layers; this is {ours['architecture']}, {ours['layers']} layers): "
                         "recalibrate with `sparsekit calibrate` on this model")
    saved, here = theirs.get("linears", {}), ours["linears"]
    pairs = [(n, saved[n], here[n]) for n in names if n in saved and n in here]
    for n, a, b in pairs:
        if a["shape"] != b["shape"]:
            raise UsageError(f"{label} was computed on another model: {n} has shape {a['shape']}, "
                             f"here {b['shape']}: recalibrate")
    for n, a, b in pairs:
        if a["dtype"] != b["dtype"]:
            raise UsageError(f"{label} was calibrated on {a['dtype']} weights but this model's are {b['dtype']} "
                             f"({n}): recalibrate, or load the model with --dtype {a['dtype']}")
    for n, a, b in pairs:  # a weightless model (None digests) is checked up to here
        if a["weights"] is not None and b["weights"] is not None and a["weights"] != b["weights"]:
            raise UsageError(f"{label} was calibrated on different weights ({n} differs): "
                             "recalibrate with `sparsekit calibrate` on this model")


def _flag_value(value) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check_settings(meta_settings: dict, wanted: dict, path: str | Path | None = None) -> None:
    """Raise a one-line UsageError for the first setting in `wanted` (flag name without dashes,
    underscores for dashes, e.g. {"bos": "always"}) that differs from what the statistics file
    `path` records (`meta_settings`). A setting the file does not record counts as different."""
    label = f"--stats {path}" if path is not None else "--stats"
    for key, value in wanted.items():
        flag = "--" + key.replace("_", "-")
        if key not in meta_settings:
            raise UsageError(f"{label} does not record the {flag} it was calibrated with: recalibrate "
                             f"with this sparsekit")
        theirs = meta_settings[key]
        if theirs != value:
            raise UsageError(f"{label} was calibrated with {flag} {_flag_value(theirs)} but this run uses "
                             f"{flag} {_flag_value(value)}: recalibrate or pass {flag} {_flag_value(theirs)}")


# ---------------------------------------------------------------------------------- writing
def _header_bound(fp: dict, settings: dict) -> int:
    """Bytes that surely hold the header when every linear of `fp` is written with all of
    `STATE_KEYS` (or is an alias), with 20-digit offsets; a multiple of 8."""
    linears = fp.get("linears", {})
    tensors = 0
    for name, info in linears.items():
        shape_chars = len(json.dumps(info.get("shape", [])))
        for key in STATE_KEYS:
            # "name/key":{"dtype":"BF16","shape":[..],"data_offsets":[<20 digits>,<20 digits>]},
            tensors += len(json.dumps(f"{name}/{key}")) + shape_chars + 2 * 20 + 64
    aliases = {name: name for name in linears}
    meta = json.dumps({"format": FORMAT, "version": VERSION, "fingerprint": fp, "settings": settings,
                       "aliases": aliases})
    bound = tensors + 2 * len(meta) + 256  # JSON-escaping a string at most doubles it
    return -(-bound // 8) * 8


class StatsWriter:
    """Write a statistics file one decoder layer at a time, atomically.

    with StatsWriter(path, fingerprint(model, targets), settings) as writer:
        for each layer: writer.add_layer({full name: InputStats})   # aliases: the same object
    # leaving the block normally finishes (renames into place); an exception removes the
    # temporary file and leaves an existing `path` untouched.

    Only the statistics handed to `add_layer` are in memory; their bytes are written at once.
    The file gets the mode of a normal new file (0666 less the umask).
    """

    def __init__(self, path: str | Path, fp: dict, settings: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._meta = {"format": FORMAT, "version": VERSION, "fingerprint": fp, "settings": settings}
        json.dumps(self._meta)  # fail now, not after hours, if the settings are not JSON
        self._reserved = _header_bound(fp, settings)
        self._tmp = temporary_path(self.path, "stats")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "wb")
        self._file.seek(8 + self._reserved)
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}
        self._aliases: dict[str, str] = {}
        self._names: set[str] = set()
        self._offset = 0
        self._done = False

    # -- feeding
    def add_layer(self, stats: dict[str, InputStats]) -> None:
        """Write the statistics of some linears (typically one decoder layer). Entries that
        are the same `InputStats` object within this call are stored once, as aliases."""
        if self._done:
            raise RuntimeError("StatsWriter is closed")
        owners: dict[int, str] = {}
        for name, s in stats.items():
            if name in self._names:
                raise ValueError(f"statistics for {name} were already written")
            self._names.add(name)
            if id(s) in owners:
                self._aliases[name] = owners[id(s)]
                continue
            owners[id(s)] = name
            state = s.state_view()
            for key in sorted(state, key=lambda k: (state[k].element_size() < 8, k)):  # 8-byte types first
                self._write(f"{name}/{key}", state[key])

    def add_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write other per-layer tensors under their own names (e.g. activation sketches,
        ``<point>/act.<field>``), one layer at a time like the statistics."""
        if self._done:
            raise RuntimeError("StatsWriter is closed")
        for key in sorted(tensors, key=lambda k: (tensors[k].element_size() < 8, k)):
            if key in self._entries:
                raise ValueError(f"{key} was already written")
            self._write(key, tensors[key])

    def _write(self, key: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store {key} of dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        self._file.write(memoryview(raw))
        size = t.numel() * t.element_size()
        self._entries[key] = (_DTYPES[t.dtype], list(t.shape), self._offset, self._offset + size)
        self._offset += size

    # -- ending
    def _header(self) -> bytes:
        meta = dict(self._meta, aliases=self._aliases)
        header = {"__metadata__": {"sparsekit": json.dumps(meta)}}
        for key, (dtype, shape, start, end) in self._entries.items():
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
        return json.dumps(header, separators=(",", ":")).encode()

    def finish(self) -> Path:
        """Write the header, flush to disk and rename over `path`. Returns `path`."""
        if self._done:
            raise RuntimeError("StatsWriter is closed")
        try:
            header = self._header()
            if len(header) <= self._reserved:
                self._file.seek(0)
                self._file.write(struct.pack("<Q", self._reserved))
                self._file.write(header + b" " * (self._reserved - len(header)))
            else:
                self._rewrite_with(header)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def _rewrite_with(self, header: bytes) -> None:
        """The header outgrew its room: copy the data once behind a header of the right size."""
        header += b" " * (-(8 + len(header)) % 8)
        other = self._tmp.with_name(self._tmp.name + "2")
        fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as dst:
                dst.write(struct.pack("<Q", len(header)))
                dst.write(header)
                self._file.flush()
                with open(self._tmp, "rb") as src:
                    src.seek(8 + self._reserved)
                    shutil.copyfileobj(src, dst, 64 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            self._file.close()
            os.replace(other, self._tmp)
            self._file = open(self._tmp, "ab")
        finally:
            if other.exists():
                other.unlink()

    def abort(self) -> None:
        """Drop everything written so far (the target, if it exists, is untouched)."""
        self._done = True
        try:
            self._file.close()
        finally:
            if self._tmp.exists():
                self._tmp.unlink()

    def __enter__(self) -> "StatsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if not self._done:
                self.abort()
        elif not self._done:
            self.finish()


# ---------------------------------------------------------------------------------- reading
def _layout(path: str | Path) -> tuple[dict, int]:
    """(safetensors header, byte offset of the data), read with plain file reads and checked
    against the file's size: a statistics file of a large model (tens of GB with Hessians) must
    not be memory-mapped whole just to read one layer (that fails where address space or
    overcommit is limited), and a truncated file is named as such."""
    try:
        header = safetensors_header(path)
    except DamagedFile as exc:
        raise UsageError(f"--stats {path}: damaged statistics file ({exc}): recalibrate with "
                         "`sparsekit calibrate`") from None
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
    return header, 8 + size


def read_header(path: str | Path) -> dict:
    """The sparsekit metadata of a statistics file (format and version checked)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--stats {path}: no such file: make one with `sparsekit calibrate MODEL -o {path.name}`")
    header, _ = _layout(path)
    try:
        meta = json.loads((header.get("__metadata__") or {}).get("sparsekit", "{}"))
    except ValueError:
        meta = {}
    if meta.get("format") != FORMAT:
        raise UsageError(f"--stats {path}: not a sparsekit statistics file: make one with `sparsekit calibrate`")
    if meta.get("version") != VERSION:
        raise UsageError(f"--stats {path} is a version-{meta.get('version')} statistics file, which is not tied to "
                         f"the exact weights (this sparsekit reads version {VERSION}): recalibrate with "
                         "`sparsekit calibrate`")
    return meta


def _tensor_names(path: str | Path) -> list[str]:
    header, _ = _layout(path)
    return [k for k in header if k != "__metadata__"]


_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}


def _read_tensors(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """Read just `keys` from a safetensors file: a seek and a read each, nothing mapped."""
    header, start = _layout(path)
    out = {}
    with open(path, "rb") as f:
        for key in keys:
            info = header[key]
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            buf = torch.empty(end - begin, dtype=torch.uint8)  # read straight into the tensor
            if f.readinto(buf.numpy()) != end - begin:
                raise UsageError(f"--stats {path}: truncated at {key}: recalibrate with `sparsekit calibrate`")
            out[key] = buf.view(_TORCH_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


class SavedStats(Mapping):
    """Read-only mapping full linear name -> InputStats over a statistics file, read on demand.

    `stats[name]` reads that linear's statistics (its alias owner's) from the file; the most
    recent one is kept, so q/k/v or gate/up asked for in turn are read once and are the same
    object. Nothing else is held in memory.
    """

    def __init__(self, path: Path, owners: dict[str, str], keys: dict[str, list[str]], settings: dict,
                 device=None):
        self.path, self.settings, self._device = path, settings, device
        self._owner, self._keys = owners, keys
        self._last: tuple[str, InputStats] | None = None

    def __getitem__(self, name: str) -> InputStats:
        owner = self._owner[name]
        if self._last is None or self._last[0] != owner:
            self._last = None  # let the previous one go before reading the next
            state = {k.rsplit("/", 1)[1]: t for k, t in _read_tensors(str(self.path), self._keys[owner]).items()}
            self._last = (owner, InputStats.from_state_dict(state, device=self._device))
        return self._last[1]

    def without_hessian(self) -> "SavedStats":
        """The same statistics without reading the Hessians (e.g. for Wanda scores of every
        layer up front: a few vectors per linear instead of in_features^2 floats)."""
        keys = {o: [k for k in ks if not k.endswith("/hessian")] for o, ks in self._keys.items()}
        return SavedStats(self.path, self._owner, keys, self.settings, self._device)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)

    def __repr__(self) -> str:
        return f"SavedStats({str(self.path)!r}, {len(self)} linears)"


def _owners(path: Path, meta: dict) -> dict[str, list[str]]:
    """Statistics tensor names of a file, by the linear that owns them (aliases share an owner)."""
    by_owner: dict[str, list[str]] = {}
    for k in (k for k in _tensor_names(path) if SKETCH_TAG not in k):
        by_owner.setdefault(k.rsplit("/", 1)[0], []).append(k)
    return by_owner


def check_stats_file(path: str | Path, fp: dict, names: list[str], need_hessian: bool = False) -> dict:
    """Everything `load_stats` checks without reading statistics: the header, the model (from a
    fingerprint, possibly of a weightless model: then shapes and dtypes, not values), that every
    linear of ``names`` has statistics and, with ``need_hessian``, a Hessian. Returns the meta."""
    path = Path(path)
    label = f"--stats {path}"
    meta = read_header(path)
    theirs = meta["fingerprint"]
    check_fingerprint(theirs, fp, [], label)  # the model as a whole first
    aliases = meta.get("aliases", {})
    by_owner = _owners(path, meta)
    missing = [n for n in names if aliases.get(n, n) not in by_owner]
    if missing:
        raise UsageError(f"{label} has no statistics for {len(missing)} layer(s), e.g. {missing[0]}: "
                         "recalibrate with the same --targets/--ignore, or drop --stats")
    check_fingerprint(theirs, fp, names, label)
    if need_hessian and any(f"{aliases.get(n, n)}/hessian" not in by_owner[aliases.get(n, n)] for n in names):
        raise UsageError(f"{label} has no Hessians, which sparsegpt needs: "
                         "recalibrate with `sparsekit calibrate --hessian`")
    return meta


def load_stats(path: str | Path, fp: dict, names: list[str], need_hessian: bool = False,
               device=None) -> tuple[SavedStats, dict]:
    """Statistics for `names` (a lazy `SavedStats`), checked against the model's fingerprint
    (`check_stats_file`). Returns (stats, settings); compare settings with `check_settings`."""
    path = Path(path)
    meta = check_stats_file(path, fp, names, need_hessian)
    aliases, by_owner = meta.get("aliases", {}), _owners(path, meta)
    owners = {n: aliases.get(n, n) for n in names}
    used = {o: by_owner[o] for o in set(owners.values())}
    return SavedStats(path, owners, used, meta.get("settings", {}), device), meta.get("settings", {})


def load_sketches(path: str | Path, keys) -> dict:
    """The activation sketches of `keys` (points, see `activation.plan`) from a statistics file
    written by `sparsekit calibrate --activations`, as ActivationSketch objects."""
    path = Path(path)
    settings = read_header(path).get("settings", {})
    if not settings.get("activations"):
        raise UsageError(f"--stats {path} has no activation statistics: recalibrate with "
                         "`sparsekit calibrate --activations`, or drop --stats")
    wanted = set(keys)
    names = [k for k in _tensor_names(path) if SKETCH_TAG in k and k.split(SKETCH_TAG)[0] in wanted]
    tensors = _read_tensors(str(path), names)
    found = {k.split(SKETCH_TAG)[0] for k in names}
    missing = sorted(wanted - found)
    if missing:
        raise UsageError(f"--stats {path} has no activation statistics for {len(missing)} point(s), e.g. "
                         f"{missing[0]}: recalibrate with `sparsekit calibrate --activations` and the same "
                         "--targets/--ignore")
    return sketches_from_tensors(tensors)

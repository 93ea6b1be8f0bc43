"""``sparsekit export`` as a library call: check every option, then write the export.

:func:`export` refuses a bad option with a one-line UsageError (worded for the command line's
options) before reading a tensor, then streams the pruned directory into the format's codec
(:func:`sparsekit.exporting.writer.export_model`) and returns its summary. It never prints;
``progress(stage, done, total)`` reports how far it got.
"""

from __future__ import annotations

from pathlib import Path

from sparsekit.dtypes import DTYPES
from sparsekit.errors import UsageError
from sparsekit.exporting.codecs import FORMATS
from sparsekit.exporting.writer import DEFAULT_MAX_SHARD_BYTES, check_export_paths, export_model
from sparsekit.workflows.common import Progress, guarded_output, notify

__all__ = ["check_export_options", "export"]


def check_export_options(pruned: str | Path, output: str | Path, *, format: str = "sparse24",
                         dtype: str | None = None,
                         max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
                         compressed_tensors_compat: bool = False, overwrite: bool = False) -> None:
    """Every refusal that needs no tensor read: the format, the dtype, the shard size, the
    compat switch (compressed formats only) and the input/output directories."""
    codec = FORMATS.get_entry(format)
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if max_shard_size < 1:
        raise UsageError(f"--max-shard-size must be a positive number of bytes, got {max_shard_size}")
    if compressed_tensors_compat and not codec.compressed:
        compressed = " or ".join(name for name, c in FORMATS.items() if c.compressed)
        raise UsageError(f"--compressed-tensors-compat applies to --format {compressed}: drop it")
    check_export_paths(pruned, output, overwrite)


def export(pruned: str | Path, output: str | Path, *, format: str = "sparse24",
           dtype: str | None = None, max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
           compressed_tensors_compat: bool = False, overwrite: bool = False,
           progress: Progress | None = None) -> dict:
    """Export the directory ``sparsekit prune`` wrote (``pruned``) to ``output`` in ``format``
    (a name in ``FORMATS``), casting floating tensors to ``dtype`` if given, in safetensors
    shards of at most ``max_shard_size`` bytes. Returns the summary of
    :func:`~sparsekit.exporting.writer.export_model` (with ``notes`` when something was said: a
    directory created, temporaries of an interrupted run removed). ``progress`` gets ("exporting <format>",
    None, None) before the first tensor, then (the same stage, tensors done, total) after each."""
    check_export_options(pruned, output, format=format, dtype=dtype,
                         max_shard_size=max_shard_size,
                         compressed_tensors_compat=compressed_tensors_compat, overwrite=overwrite)
    stage = f"exporting {format}"
    notes: list[str] = []
    with guarded_output(output, notes):
        notify(progress, stage)
        summary = export_model(pruned, output, format=format, max_shard_bytes=max_shard_size,
                               dtype=dtype, overwrite=overwrite,
                               progress=lambda done, total, name: notify(progress, stage, done, total),
                               compressed_tensors_compat=compressed_tensors_compat)
    if notes:
        summary["notes"] = notes
    return summary

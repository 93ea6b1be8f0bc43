"""`sparsekit export`: write a pruned model in a registered format."""

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from sparsekit.cli.common import JsonOpt, OverwriteOpt, ProgressView, emit_json, err, out
from sparsekit.errors import UsageError
from sparsekit.exporting.codecs import FORMATS
from sparsekit.workflows.export import export


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes from "2147483648", "500MB", "2GiB" or "1.5 GB"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in UNITS:
        raise UsageError(f"--max-shard-size {text!r} is not a size: give bytes or a number with a unit, "
                         "e.g. 500MB or 2GiB")
    return int(float(match.group(1)) * UNITS[unit])


def _command():
    def export_cmd(
        pruned: Annotated[str, typer.Argument(help="A directory written by `sparsekit prune`.")],
        output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the export to.")],
        format: Annotated[str, typer.Option("--format", help=FORMATS.help_text())] = "sparse24",
        dtype: Annotated[Optional[str], typer.Option(
            "--dtype", help="Cast floating-point weights: bfloat16, float16 or float32 (default: as stored).")] = None,
        max_shard_size: Annotated[str, typer.Option(
            "--max-shard-size", help="Largest safetensors shard: bytes, or a size such as 500MB or 2GiB (an index "
                                     "is written when sharded).")] = "2GiB",
        compressed_tensors_compat: Annotated[bool, typer.Option(
            "--compressed-tensors-compat", help="sparse24/bitmask: write the plain compressed-tensors config block "
            "for stacks with compressed-tensors <= 0.14. Without it, plain transformers refuses the export with "
            "a message naming sparsekit.load (newer compressed-tensors would load it with random weights).")] = False,
        overwrite: OverwriteOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Write a pruned model as compressed or dense safetensors, with sparsekit's metadata.

        Layers targeted by the pruning recipe are compressed; a layer the format cannot hold (e.g. not
        exactly 2:4 for sparse24) is refused, never re-pruned. Written tensor by tensor into a temporary
        directory, moved into place at the end. Load compressed exports with `sparsekit.load(path)`.
        """
        with ProgressView(quiet=json_out) as progress:
            summary = export(pruned, output, format=format, dtype=dtype, max_shard_size=parse_size(max_shard_size),
                             compressed_tensors_compat=compressed_tensors_compat, overwrite=overwrite,
                             progress=progress)
        for note in summary.get("notes", []):
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        if summary["compressed_tensors_compat"]:
            err.print("note: --compressed-tensors-compat: this export decodes correctly only with sparsekit.load or "
                      "compressed-tensors <= 0.14; plain transformers with a newer compressed-tensors loads it with "
                      "random weights in the compressed layers", highlight=False, markup=False, soft_wrap=True)
        if json_out:
            emit_json(summary)
            return
        mib = 2 ** 20
        disk = sum(p.stat().st_size for p in Path(output).iterdir() if p.is_file())
        what = "compressed" if FORMATS[format].compressed else "pruned"
        out.print(f"Exported {summary['layers']} {what} layers ({format}) to {output} ({summary['shards']} shard(s), "
                  f"{summary['tensor_bytes'] / mib:.1f} MiB of tensors, {disk / mib:.1f} MiB on disk with the "
                  f"tokenizer and metadata; linear weights {summary['linear_bytes'] / mib:.1f} MiB "
                  f"of {summary['linear_dense_bytes'] / mib:.1f} MiB dense) in {summary['seconds']:.1f} s. "
                  f"Load it with sparsekit.load('{output}')")

    return export_cmd


def register(app) -> None:
    app.command("export")(_command())

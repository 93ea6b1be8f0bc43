"""`sparsekit export`: write a pruned model in a registered format."""

from typing import Annotated, Optional

import typer

from sparsekit.cli.common import JsonOpt, OverwriteOpt, ProgressView, emit_json, out
from sparsekit.export.codecs import FORMATS
from sparsekit.workflows.export import export


def _command():
    def export_cmd(
        pruned: Annotated[str, typer.Argument(help="A directory written by `sparsekit prune`.")],
        output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the export to.")],
        format: Annotated[str, typer.Option("--format", help=FORMATS.help_text())] = "sparse24",
        dtype: Annotated[Optional[str], typer.Option(
            "--dtype", help="Cast floating-point weights: bfloat16, float16 or float32 (default: as stored).")] = None,
        max_shard_size: Annotated[int, typer.Option(
            "--max-shard-size", help="Largest safetensors shard, in bytes (an index is written when sharded).")
            ] = 2 * 1024 ** 3,
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
            summary = export(pruned, output, format=format, dtype=dtype, max_shard_size=max_shard_size,
                             compressed_tensors_compat=compressed_tensors_compat, overwrite=overwrite,
                             progress=progress)
        if json_out:
            emit_json(summary)
            return
        mib = 2 ** 20
        what = "compressed" if FORMATS[format].compressed else "pruned"
        out.print(f"Exported {summary['layers']} {what} layers ({format}) to {output} ({summary['shards']} shard(s), "
                  f"{summary['tensor_bytes'] / mib:.1f} MiB; linear weights {summary['linear_bytes'] / mib:.1f} MiB "
                  f"of {summary['linear_dense_bytes'] / mib:.1f} MiB dense) in {summary['seconds']:.1f} s. "
                  f"Load it with sparsekit.load('{output}')")

    return export_cmd


def register(app) -> None:
    app.command("export")(_command())

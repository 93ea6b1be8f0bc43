"""Rich tables for the command line summaries (kept out of the Typer commands)."""

from __future__ import annotations

from rich.table import Table
from torch import nn

from sparsekit.activation.stage import by_role
from sparsekit.anatomy import decoder_layers, layer_index

MIB = 2 ** 20


def prune_table(run, model: nn.Module) -> Table:
    """One row per decoder layer: linears pruned, target and achieved sparsity (weighted by
    size), DSnoT swaps when refined, pruning-math seconds and the layer's wall time in the
    sequential engine."""
    path, _ = decoder_layers(model)
    rows: dict[int, list] = {}  # layer -> [linears, target zeros, zeros, numel, math seconds, swaps]
    for r in run.layers:
        idx = layer_index(path, r.name)
        weight = model.get_submodule(r.name).weight
        acc = rows.setdefault(idx, [0, 0.0, 0, 0, 0.0, None])
        acc[0] += 1
        acc[1] += r.target * weight.numel()
        acc[2] += int((weight == 0).sum())
        acc[3] += weight.numel()
        acc[4] += r.seconds
        if r.swaps is not None:
            acc[5] = (acc[5] or 0) + r.swaps
    refined = any(acc[5] is not None for acc in rows.values())
    table = Table(title="Pruned layers")
    for col in ("layer", "linears", "target", "achieved", *(("DSnoT swaps",) if refined else ()), "math s", "layer s"):
        table.add_column(col, justify="right")
    for idx in sorted(rows):
        count, target, zeros, numel, math_s, swaps = rows[idx]
        layer_s = run.times.per_layer[idx] if idx < len(run.times.per_layer) else math_s
        table.add_row(str(idx), str(count), f"{target / numel:.2%}", f"{zeros / numel:.2%}",
                      *((str(swaps or 0),) if refined else ()), f"{math_s:.2f}", f"{layer_s:.2f}")
    return table


def allocation_table(kind: str, allocation: dict[str, float], values: dict[str, float] | None,
                     label: str | None = None) -> Table:
    """`--layerwise`: the sparsity chosen for each decoder layer (and the value behind it, e.g.
    OWL's outlier ratio, named ``label``)."""
    table = Table(title=f"Layer sparsities ({kind})")
    table.add_column("layer")
    if values and label:
        table.add_column(label, justify="right")
    table.add_column("sparsity", justify="right")
    for layer, sparsity in allocation.items():
        row = [layer] + ([f"{values[layer]:.4g}"] if values and label else []) + [f"{sparsity:.2%}"]
        table.add_row(*row)
    return table


def activation_table(section: dict) -> Table:
    """`prune --activation`: per site type, the target and the sparsity measured on the
    calibration data with the thresholds set."""
    table = Table(title=f"Activation sparsity ({section['method']}, {section['allocation']}, mode {section['mode']})")
    for col in ("site", "sites", "target", "on calibration data"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for role, row in by_role(section).items():
        table.add_row(role, str(row["sites"]), f"{row['target']:.2%}", f"{row['calibrated']:.2%}")
    return table


def activation_report_table(report: dict) -> Table:
    """`eval` of a model with activation sparsity: the measured fraction of zeroed inputs per
    layer type."""
    table = Table(title="Activation sparsity measured during evaluation")
    for col in ("layer type", "layers", "zeroed"):
        table.add_column(col, justify="left" if col == "layer type" else "right")
    for kind, row in report.items():
        zeroed = row.get("zeroed")
        table.add_row(kind, str(row.get("layers")), "-" if zeroed is None else f"{zeroed:.2%}")
    return table


def export_table(path: str, facts: dict) -> Table:
    """`sparsekit info` on an export: format, sizes, sparsity and the recipe."""
    table = Table(title=f"Export {path}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("format", facts["format"]), ("dtype", facts["dtype"]), ("files", facts["files"]),
            ("compressed layers", facts["compressed_layers"]),
            ("on disk", f"{facts['total_bytes'] / MIB:.1f} MiB"),
            ("linear weights", f"{facts['linear_bytes'] / MIB:.1f} MiB of {facts['linear_dense_bytes'] / MIB:.1f} "
                               f"MiB dense ({facts['linear_ratio']:.4f})"),
            ("sparsity of those", f"{facts['sparsity']:.2%}")]
    if facts.get("recipe"):
        r = facts["recipe"]
        rows.append(("recipe", f"{r.get('method')} {r.get('pattern')} @ {r.get('sparsity')}"))
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def bench_table(title: str, result: dict) -> Table:
    """`sparsekit bench`: dense and sparse rows."""
    table = Table(title=title)
    for col in ("", "decode tok/s", "prefill tok/s", "peak memory GiB", "weights GiB", "CUDA graph"):
        table.add_column(col, justify="right")
    for kind in ("dense", "sparse"):
        r = result[kind]
        peak = r.get("peak_memory_bytes")
        table.add_row(kind, f"{r['decode_tokens_per_s']:.1f}", f"{r['prefill_tokens_per_s']:.1f}",
                      "-" if peak is None else f"{peak / 2**30:.2f}", f"{r['weight_bytes'] / 2**30:.2f}",
                      str(r.get("cuda_graph")))
    return table

"""`sparsekit info`: describe a model or an export."""

from rich.table import Table

from sparsekit.cli.common import DeviceOpt, DtypeOpt, JsonOpt, ModelArg, ProgressView, TrustOpt, emit_json, err, out
from sparsekit.cli.tables import export_table
from sparsekit.workflows.info import info


def info_cmd(model: ModelArg, dtype: DtypeOpt = "auto", device: DeviceOpt = "auto",
             trust_remote_code: TrustOpt = False, json_out: JsonOpt = False) -> None:
    """Describe a model: architecture, decoder layers, linear shapes, parameters, weight sparsity."""
    with ProgressView(quiet=json_out) as progress:
        facts = info(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, progress=progress)
    if json_out:
        emit_json(facts)
    elif "format" in facts:
        out.print(export_table(model, facts))
    else:
        out.print(f"[bold]{facts['architecture']}[/] ({facts['model_type']}), {facts['layers']} decoder "
                  f"layers at {facts['layers_path']}, {facts['parameters'] / 1e6:.1f}M parameters, {facts['dtype']}")
        table = Table(title="Linear layers (per decoder layer)")
        for col in ("layer type", "out x in", "sparsity"):
            table.add_column(col, justify="right" if col != "layer type" else "left")
        for kind, row in facts["linears"].items():
            o, i = row["shape_out_in"]
            table.add_row(kind, f"{o} x {i}", f"{row['sparsity']:.2%}")
        out.print(table)
        out.print(f"Weight sparsity of the prunable linears: {facts['linear_sparsity']:.2%}")
        if facts.get("recipe"):
            r = facts["recipe"]
            out.print(f"Pruned by sparsekit: {r.get('method')} {r.get('pattern')} @ {r.get('sparsity')}"
                      f" (layerwise {r.get('layerwise')}, refine {r.get('refine')})", highlight=False)
        if facts.get("activation"):
            a = facts["activation"]
            out.print(f"Activation sparsity: {a['method']} @ {a['target']} on {a['sites']} sites, mode {a['mode']}",
                      highlight=False)
    for item in facts.get("stale_temporaries", []):
        err.print(f"note: {item['path']} ({item['bytes'] / 2**20:.1f} MiB) was left by an interrupted run; the next "
                  "run to that output removes it (or delete it)", highlight=False, markup=False, soft_wrap=True)


def register(app) -> None:
    app.command("info")(info_cmd)

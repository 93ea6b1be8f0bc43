"""Quality of weight pruning on the demo model (Gemma-3-270M), through the CLI.

Calibrates on WikiText-2 valid, evaluates perplexity on WikiText-2 test, for every combination of
the given methods, patterns/sparsities, layerwise allocations, refiners, BOS settings and seeds.
Each run is `sparsekit prune ... --json` then `sparsekit eval OUT ... --json`. Prints a markdown
table for BENCHMARKS.md and writes all runs (with per-layer refinement times) as JSON.

    # issue "numbers users can trust": dense, magnitude, Wanda, SparseGPT at 50% and 2:4, BOS and not
    python benchmarks/quality.py --bos always never --seeds 0
    # layerwise allocation and DSnoT at 50/60/70% and 2:4
    python benchmarks/quality.py --methods wanda sparsegpt --sparsities 0.5 0.6 0.7 --patterns unstructured 2:4 \
        --layerwise uniform owl dlp --refine none dsnot --bos always --no-dense
"""

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def run_json(cmd: list[str]) -> dict:
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def configs(args):
    for method, pattern, layerwise, refine in itertools.product(args.methods, args.patterns, args.layerwise,
                                                                args.refine):
        if pattern != "unstructured" and layerwise != "uniform":
            continue  # an N:M pattern fixes the sparsity of every layer
        if method == "magnitude" and (refine != "none" or layerwise != "uniform"):
            continue
        for sparsity in (args.sparsities if pattern == "unstructured" else [None]):
            yield method, pattern, sparsity, layerwise, refine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--patterns", nargs="+", default=["unstructured", "2:4"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.5])
    ap.add_argument("--layerwise", nargs="+", default=["uniform"])
    ap.add_argument("--refine", nargs="+", default=["none"])
    ap.add_argument("--bos", nargs="+", default=["always"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--sampling", default="random")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib", default=str(SHARED / "valid.txt"))
    ap.add_argument("--test", default=str(SHARED / "test.txt"))
    ap.add_argument("--no-dense", action="store_true", help="skip the dense evaluation")
    ap.add_argument("--out", default="quality.json")
    args = ap.parse_args()

    runs = []

    def evaluate(model: str, bos: str) -> dict:
        return run_json(["sparsekit", "eval", model, "--data", args.test, "--seqlen", str(args.seqlen),
                         "--max-windows", str(args.eval_windows), "--dtype", "float32", "--bos", bos, "--json"])

    def save():
        Path(args.out).write_text(json.dumps(runs, indent=1))

    if not args.no_dense:
        for bos in args.bos:
            runs.append({"method": "dense", "pattern": "-", "sparsity": 0.0, "layerwise": "-", "refine": "-",
                         "bos": bos, "seed": None, **evaluate(args.model, bos)})
            print(f"  dense bos={bos}: ppl {runs[-1]['ppl']:.3f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sparsekit-quality-"))
    try:
        for bos in args.bos:
            for method, pattern, sparsity, layerwise, refine in configs(args):
                seeds = args.seeds if method != "magnitude" or refine != "none" else [None]
                for seed in seeds:
                    out = work / "pruned"
                    cmd = ["sparsekit", "prune", args.model, "-o", str(out), "--method", method, "--pattern", pattern,
                           "--layerwise", layerwise, "--refine", refine, "--bos", bos, "--dtype", "float32",
                           "--save-dtype", "float32", "--overwrite", "--json"]
                    if sparsity is not None:
                        cmd += ["--sparsity", str(sparsity)]
                    if seed is not None:
                        cmd += ["--data", args.calib, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                                "--seed", str(seed), "--sampling", args.sampling]
                    start = time.perf_counter()
                    pruned = run_json(cmd)
                    prune_s = time.perf_counter() - start
                    ev = evaluate(str(out), bos)
                    refine_layers = [v["seconds"] for v in pruned["layers"].values()]
                    runs.append({"method": method, "pattern": pattern, "sparsity": sparsity, "layerwise": layerwise,
                                 "refine": refine, "bos": bos, "seed": seed, "prune_wall_s": prune_s,
                                 "prune_seconds": pruned["seconds"], "layer_sparsity": pruned.get("layer_sparsity"),
                                 "achieved": pruned["achieved_sparsity"], "layer_seconds": refine_layers, **ev})
                    print(f"  {method} {pattern} {sparsity} {layerwise} {refine} bos={bos} seed={seed}: "
                          f"ppl {ev['ppl']:.3f}, sparsity {pruned['achieved_sparsity']:.4f}, prune {prune_s:.0f} s, "
                          f"refine {pruned['seconds'].get('refine', 0):.1f} s", flush=True)
                    shutil.rmtree(out)
                    save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        save()

    print("\n| bos | method | pattern | sparsity | layerwise | refine | ppl | per seed | achieved | refine s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["bos"], r["method"], r["pattern"], r["sparsity"], r["layerwise"], r["refine"]), []).append(r)
    for key, rs in groups.items():
        ppls = [r["ppl"] for r in rs]
        refine_s = statistics.mean(r.get("prune_seconds", {}).get("refine", 0.0) for r in rs)
        achieved = rs[0].get("achieved", rs[0]["weight_sparsity"])
        print(f"| {' | '.join('-' if k is None else str(k) for k in key)} | {statistics.mean(ppls):.2f} | "
              f"{', '.join(f'{p:.2f}' for p in ppls)} | {achieved:.2%} | {refine_s:.1f} |")


if __name__ == "__main__":
    main()

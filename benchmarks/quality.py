"""Quality of weight pruning on the demo model (Gemma-3-270M), through the CLI.

Calibrates on WikiText-2 valid, evaluates perplexity on WikiText-2 test, for dense, magnitude,
Wanda and SparseGPT at each pattern, averaging Wanda and SparseGPT over several calibration seeds
(random windows). Prints a markdown table for BENCHMARKS.md and writes all runs as JSON.

    python benchmarks/quality.py --seeds 0 1 --nsamples 32 --seqlen 512 --eval-windows 32
"""

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SHARED = "../shared/data/wikitext-2"


def run_json(cmd: list[str]) -> dict:
    print("$", " ".join(cmd), flush=True)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--patterns", nargs="+", default=["unstructured", "4:8", "2:4"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--sampling", default="random")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib", default=f"{SHARED}/valid.txt")
    ap.add_argument("--test", default=f"{SHARED}/test.txt")
    ap.add_argument("--out", default="quality.json")
    args = ap.parse_args()

    evaluate = ["--data", args.test, "--seqlen", str(args.seqlen), "--max-windows", str(args.eval_windows),
                "--dtype", "float32", "--json"]
    runs = [{"method": "dense", "pattern": "-", "seed": None,
             **run_json(["sparsekit", "eval", args.model, *evaluate])}]
    print(f"  dense: ppl {runs[0]['ppl']:.3f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sparsekit-quality-"))
    try:
        for method in args.methods:
            for pattern in args.patterns:
                for seed in (args.seeds if method != "magnitude" else [None]):
                    out = work / f"{method}-{pattern.replace(':', 'of')}-{seed}"
                    cmd = ["sparsekit", "prune", args.model, "-o", str(out), "--method", method,
                           "--pattern", pattern, "--dtype", "float32", "--json"]
                    if pattern == "unstructured":
                        cmd += ["--sparsity", str(args.sparsity)]
                    if seed is not None:
                        cmd += ["--data", args.calib, "--nsamples", str(args.nsamples), "--seqlen",
                                str(args.seqlen), "--seed", str(seed), "--sampling", args.sampling]
                    start = time.perf_counter()
                    pruned = run_json(cmd)
                    prune_s = time.perf_counter() - start
                    ev = run_json(["sparsekit", "eval", str(out), *evaluate])
                    runs.append({"method": method, "pattern": pattern, "seed": seed, "prune_wall_s": prune_s,
                                 "prune_seconds": pruned["seconds"], **ev})
                    print(f"  {method} {pattern} seed={seed}: ppl {ev['ppl']:.3f}, sparsity "
                          f"{ev['weight_sparsity']:.4f}, prune {prune_s:.0f} s", flush=True)
                    shutil.rmtree(out)
                    Path(args.out).write_text(json.dumps(runs, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        Path(args.out).write_text(json.dumps(runs, indent=1))

    print("\n| method | pattern | ppl (mean over seeds) | per seed | linear sparsity |")
    print("|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["method"], r["pattern"]), []).append(r)
    for (method, pattern), rs in groups.items():
        ppls = [r["ppl"] for r in rs]
        print(f"| {method} | {pattern} | {statistics.mean(ppls):.2f} | {', '.join(f'{p:.2f}' for p in ppls)} | "
              f"{rs[0]['weight_sparsity']:.2%} |")


if __name__ == "__main__":
    main()

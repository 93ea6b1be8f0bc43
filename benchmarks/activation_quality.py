"""Activation sparsity (TEAL, CHESS, WINA) on the demo model, alone and on top of weight pruning.

For each weight base (dense, 50% unstructured Wanda, 2:4 Wanda) the base is pruned once; then for
each activation method and target, `sparsekit prune BASE --method none --activation M
--act-sparsity S` calibrates the thresholds on the base (staged, layer by layer) and `sparsekit
eval` measures perplexity with the sparsity active plus the zeroed share per layer type. Also
times `sparsekit calibrate --activations` and reports the statistics-file size.

    python benchmarks/activation_quality.py --sparsities 0.25 0.4 0.5 0.65
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def run_json(cmd: list[str]) -> dict:
    print("$", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--methods", nargs="+", default=["teal", "chess", "wina"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.4, 0.5, 0.65])
    ap.add_argument("--bases", nargs="+", default=["dense", "wanda-50", "wanda-2:4"])
    ap.add_argument("--nsamples", type=int, default=32, help="weight-pruning calibration windows")
    ap.add_argument("--act-nsamples", type=int, default=8, help="activation calibration windows")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib", default=str(SHARED / "valid.txt"))
    ap.add_argument("--test", default=str(SHARED / "test.txt"))
    ap.add_argument("--out", default="activation_quality.json")
    args = ap.parse_args()

    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="sparsekit-act-"))

    def save():
        Path(args.out).write_text(json.dumps(runs, indent=1))

    def evaluate(model) -> dict:
        return run_json(["sparsekit", "eval", model, "--data", args.test, "--seqlen", args.seqlen,
                         "--max-windows", args.eval_windows, "--dtype", "float32", "--json"])

    common = ["--dtype", "float32", "--save-dtype", "float32", "--json"]
    try:
        # statistics-file size and time of `calibrate --activations` (dense sketches)
        stats = work / "stats.safetensors"
        start = time.perf_counter()
        cal = run_json(["sparsekit", "calibrate", args.model, "-o", stats, "--activations", "--data", args.calib,
                        "--nsamples", args.act_nsamples, "--seqlen", args.seqlen, "--dtype", "float32", "--json"])
        runs.append({"kind": "calibrate --activations", "wall_s": time.perf_counter() - start,
                     "bytes": os.path.getsize(stats), "seconds": cal["seconds"]})
        print(f"  calibrate --activations: {runs[-1]['wall_s']:.0f} s, {runs[-1]['bytes'] / 2**20:.1f} MiB", flush=True)
        stats.unlink()
        save()
        for base in args.bases:
            if base == "dense":
                base_dir = args.model
            else:
                pattern = base.split("-", 1)[1]
                base_dir = work / base.replace(":", "of")
                prune = ["sparsekit", "prune", args.model, "-o", base_dir, "--method", "wanda", "--data", args.calib,
                         "--nsamples", args.nsamples, "--seqlen", args.seqlen, *common]
                prune += ["--pattern", pattern] if ":" in pattern else ["--sparsity", str(int(pattern) / 100)]
                run_json(prune)
            ev = evaluate(base_dir)
            runs.append({"base": base, "method": "none", "act_sparsity": 0.0, "ppl": ev["ppl"]})
            print(f"  {base}: ppl {ev['ppl']:.3f}", flush=True)
            save()
            for method in args.methods:
                for s in args.sparsities:
                    out = work / "act"
                    start = time.perf_counter()
                    pruned = run_json(["sparsekit", "prune", base_dir, "-o", out, "--method", "none",
                                       "--activation", method, "--act-sparsity", s, "--data", args.calib,
                                       "--nsamples", args.act_nsamples, "--seqlen", args.seqlen, "--overwrite",
                                       *common])
                    act_s = time.perf_counter() - start
                    ev = evaluate(out)
                    measured = {k: round(v["zeroed"], 4) for k, v in (ev["activation_sparsity"] or {}).items()}
                    runs.append({"base": base, "method": method, "act_sparsity": s, "ppl": ev["ppl"],
                                 "measured": measured, "calibration_wall_s": act_s,
                                 "activation_seconds": pruned["seconds"]["activation"]})
                    print(f"  {base} {method} {s}: ppl {ev['ppl']:.3f}, measured {measured}, "
                          f"calibration {act_s:.0f} s", flush=True)
                    save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        save()

    print("\n| base | method | target | ppl | measured zeroed share per layer type |")
    print("|---|---|---|---|---|")
    for r in runs:
        if "base" in r:
            measured = ", ".join(f"{k} {v:.1%}" for k, v in (r.get("measured") or {}).items())
            print(f"| {r['base']} | {r['method']} | {r['act_sparsity']:.0%} | {r['ppl']:.2f} | {measured} |")


if __name__ == "__main__":
    main()

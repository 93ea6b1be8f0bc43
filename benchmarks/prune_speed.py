"""Speed and peak memory of sequential pruning on a random-weight model (no download).

    python benchmarks/prune_speed.py --model llama-3-8b --method wanda --device cuda            # all on the GPU
    python benchmarks/prune_speed.py --model llama-3-8b --method wanda --device cuda --offload  # one layer on the GPU
    python benchmarks/prune_speed.py --model llama-tiny --device cpu --nsamples 4 --seqlen 64   # smoke test

Calibration is random tokens (nsamples x seqlen), as in the issue's reference setting. Prints
one JSON line: seconds split into argument capture, statistics/recompute forwards and pruning
math, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sparsekit.workflows.bench import RANDOM_MODELS, random_model
from sparsekit.calibration.engine import activation_bytes
from sparsekit.dtypes import DTYPES
from sparsekit.anatomy import prunable_linears
from sparsekit.pruning.pipeline import prune_model
from sparsekit.recipe import Calibration, make_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b", choices=sorted(RANDOM_MODELS))
    ap.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--refine", default="none", choices=["none", "dsnot"])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--offload", action="store_true", help="weights in CPU memory, one layer at a time on the GPU")
    ap.add_argument("--activations", default="auto", choices=["auto", "cpu", "device"],
                    help="where the cached calibration activations live (auto: the engine decides)")
    args = ap.parse_args()

    home = "cpu" if args.offload else args.device
    start = time.perf_counter()
    model = random_model(args.model, DTYPES[args.dtype], home, prune=False)
    build_s = time.perf_counter() - start
    ids = torch.randint(0, model.config.vocab_size, (args.nsamples, args.seqlen),
                        generator=torch.Generator().manual_seed(0))
    spec = make_recipe(method=args.method, pattern=args.pattern, refine=args.refine,
                       calibration=Calibration(batch_size=args.batch_size))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    offload_acts = {"auto": None, "cpu": True, "device": False}[args.activations]
    run = prune_model(model, spec, prunable_linears(model), calibration=ids,
                      device=args.device if args.offload else None, offload_activations=offload_acts)
    if cuda:
        torch.cuda.synchronize()
    result = {
        "model": args.model, "method": args.method, "pattern": args.pattern, "refine": args.refine, "dtype": args.dtype,
        "device": args.device, "offload": args.offload,
        "activations_on": run.times.activations_on or None,
        "activation_gib": round(activation_bytes(model, ids) / 2**30, 2), "nsamples": args.nsamples, "seqlen": args.seqlen,
        "batch_size": args.batch_size, "build_s": round(build_s, 2), "total_s": round(run.seconds, 2),
        "capture_s": round(run.times.capture, 2), "forwards_s": round(run.times.forward, 2),
        "math_s": round(run.times.process, 2), "refine_s": round(run.refine_seconds, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

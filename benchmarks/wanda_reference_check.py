"""Check sparsekit's Wanda against a plain, independent implementation of the reference protocol.

The reference here shares no code with sparsekit's engine or masks: for decoder layer i it
runs the *whole model* (layers before i already pruned) on the calibration windows with plain
forward hooks on layer i's linears, stopping the forward after layer i; it accumulates
sum_t x_t^2 per input channel, sorts each row of |W| * sqrt(that) and zeroes the lowest half.
Slow (quadratic in depth), but obviously the protocol. Then both models are evaluated.

    python benchmarks/wanda_reference_check.py --nsamples 32 --seqlen 512 --eval-windows 32
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time

import torch

SHARED = "../shared/data/wikitext-2"


class _Stop(Exception):
    pass


@torch.no_grad()
def reference_wanda(model, ids: torch.Tensor, sparsity: float, batch: int) -> None:
    layers = model.model.layers
    for i, layer in enumerate(layers):
        linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
        def accumulate(name):
            def hook(mod, args, out):  # returns None: the output is left alone
                x = args[0].double()
                sums[name] += x.pow(2).reshape(-1, x.shape[-1]).sum(0)
            return hook

        hooks = [m.register_forward_hook(accumulate(n)) for n, m in linears.items()]

        def stop(mod, a, o):
            raise _Stop

        hooks.append(layer.register_forward_hook(stop))
        for start in range(0, ids.shape[0], batch):
            try:
                model(input_ids=ids[start:start + batch], use_cache=False)
            except _Stop:
                pass
        for h in hooks:
            h.remove()
        for n, m in linears.items():
            score = m.weight.abs().double() * sums[n].sqrt()
            k = int(m.in_features * sparsity)
            order = torch.sort(score, dim=1, stable=True).indices[:, :k]
            m.weight.scatter_(1, order, 0.0)
        print(f"  reference layer {i} done", flush=True)


def evaluate(path: str, test: str, seqlen: int, windows: int) -> float:
    cmd = ["sparsekit", "eval", path, "--data", test, "--seqlen", str(seqlen), "--max-windows", str(windows),
           "--dtype", "float32", "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["ppl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    from sparsekit.data import calibration_windows
    from sparsekit.loading import load_model
    from sparsekit.files.modeldir import write_model_dir

    work = tempfile.mkdtemp(prefix="wanda-check-")
    ours = f"{work}/sparsekit"
    subprocess.run(["sparsekit", "prune", "demo", "--method", "wanda", "--sparsity", "0.5", "--data",
                    f"{SHARED}/valid.txt", "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
                    "--sampling", "first", "--dtype", "float32", "-o", ours], check=True, capture_output=True)
    loaded = load_model("demo", dtype="float32")
    ids = calibration_windows(loaded.tokenizer, f"{SHARED}/valid.txt", args.nsamples, args.seqlen, sampling="first")
    start = time.perf_counter()
    reference_wanda(loaded.model, ids, 0.5, args.batch)
    ref_s = time.perf_counter() - start
    ref = f"{work}/reference"
    write_model_dir(loaded.model, loaded.tokenizer, ref, {"recipe": {"method": "reference wanda"}})

    from safetensors.torch import load_file

    a, b = load_file(f"{ours}/model.safetensors"), load_file(f"{ref}/model.safetensors")
    names = [k for k in a if ".layers." in k and k.endswith("proj.weight")]
    differ = sum(int(((a[k] == 0) != (b[k] == 0)).sum()) for k in names)
    total = sum(a[k].numel() for k in names)
    p_ours = evaluate(ours, f"{SHARED}/test.txt", args.seqlen, args.eval_windows)
    p_ref = evaluate(ref, f"{SHARED}/test.txt", args.seqlen, args.eval_windows)
    print(json.dumps({"ppl_sparsekit": p_ours, "ppl_reference": p_ref,
                      "relative_difference": abs(p_ours - p_ref) / p_ref,
                      "mask_entries_differing": differ, "mask_entries": total,
                      "reference_seconds": round(ref_s, 1), "nsamples": args.nsamples, "seqlen": args.seqlen,
                      "eval_windows": args.eval_windows, "log_ratio": math.log(p_ours / p_ref)}))


if __name__ == "__main__":
    main()

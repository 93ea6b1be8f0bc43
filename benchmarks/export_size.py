"""Exported size, export time and load time of the demo model (Gemma-3-270M) per format.

The model is loaded in bf16 and pruned 2:4 by magnitude right here (the size of a 2:4
export does not depend on how the mask was chosen), saved as a pruned directory, then
exported as sparse24, bitmask and dense and loaded back with ``sparsekit.exporting.load``.
Prints a markdown table. CPU is fine:

    python benchmarks/export_size.py            # demo model; first run converts the GGUF
    python benchmarks/export_size.py --model PATH_OR_ID
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sparsekit.exporting.loader import describe
from sparsekit.exporting.writer import export_model
from sparsekit.loading import load
from sparsekit.kernels.sparse24 import mask_24_magnitude
from sparsekit.loading import load_model
from sparsekit.anatomy import prunable_linears


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def prune_and_save(spec: str, out: Path) -> tuple[torch.nn.Module, float]:
    loaded = load_model(spec, dtype="bfloat16")
    model, targets = loaded.model, prunable_linears(loaded.model)
    with torch.no_grad():
        for lin in targets.values():
            lin.weight.mul_(mask_24_magnitude(lin.weight))
    model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    meta = {"sparsekit_version": "0.1.0",
            "recipe": {"method": "magnitude", "pattern": "2:4", "sparsity": 0.5},
            "layers": {n: {"target": 0.5, "achieved": 0.5} for n in targets},
            "achieved_sparsity": 0.5}
    (out / "sparsekit.json").write_text(json.dumps(meta, indent=2))
    start = time.perf_counter()
    load(out)  # plain pruned directory: transformers from_pretrained
    return model, time.perf_counter() - start


def weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--formats", default="dense,sparse24,bitmask")
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (1, 32))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, pruned_load = prune_and_save(args.model, tmp / "pruned")
        with torch.no_grad():
            ref = model(ids).logits.float()
        base = weights_bytes(tmp / "pruned")
        rows = [("pruned dir (input)", base, None, None, "-", pruned_load, 0.0)]
        for fmt in args.formats.split(","):
            summary = export_model(tmp / "pruned", tmp / fmt, fmt)
            start = time.perf_counter()
            loaded, _ = load(tmp / fmt)
            load_s = time.perf_counter() - start
            with torch.no_grad():
                diff = (loaded(ids).logits.float() - ref).abs().max().item()
            info = describe(tmp / fmt)
            rows.append((fmt, weights_bytes(tmp / fmt), info["linear_bytes"],
                         info["linear_dense_bytes"], summary["seconds"], load_s, diff))
            del loaded
    print(f"Model: {args.model}, bf16, decoder linears pruned 2:4 by magnitude; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print("| format | weights on disk (MiB) | vs input | pruned linears (MiB) | linears vs dense "
          "| export (s) | load (s) | max abs logit diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, total, lin, lin_dense, exp_s, load_s, diff in rows:
        lin_txt = f"{mib(lin)} of {mib(lin_dense)}" if lin is not None else "-"
        ratio = f"{lin / lin_dense:.4f}" if lin is not None else "-"
        exp_txt = f"{exp_s:.2f}" if isinstance(exp_s, float) else exp_s
        print(f"| {name} | {mib(total)} | {total / base:.3f} | {lin_txt} | {ratio} | {exp_txt} "
              f"| {load_s:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()

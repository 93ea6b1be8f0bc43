"""Time `--data self`: the model sampling its own calibration text, sparsekit's loop (KV cache,
logits of the newest position only, progress per token) against transformers' `generate` with the
same sampling settings (temperature 1, full vocabulary, no early end).

    python benchmarks/self_generation.py --model demo --nsamples 16 --seqlen 128
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sparsekit.data import self_generated
from sparsekit.loading import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    loaded = load(args.model, dtype="auto", device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    ours = self_generated(model, tok, args.nsamples, args.seqlen, seed=0)
    t_ours = time.perf_counter() - t0
    prompt = torch.full((args.nsamples, 1), tok.bos_token_id, device=model.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0, top_k=0,
                   top_p=1.0, max_new_tokens=args.seqlen - 1, min_new_tokens=args.seqlen - 1,
                   pad_token_id=tok.pad_token_id or tok.bos_token_id)
    t_generate = time.perf_counter() - t0
    tokens = args.nsamples * (args.seqlen - 1)
    print(json.dumps({"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen,
                      "dtype": str(next(model.parameters()).dtype), "threads": torch.get_num_threads(),
                      "machine": platform.machine(), "sparsekit_seconds": round(t_ours, 2),
                      "generate_seconds": round(t_generate, 2), "tokens": tokens,
                      "sparsekit_ms_per_step": round(1000 * t_ours / (args.seqlen - 1), 1),
                      "distinct_windows": int(ours.unique(dim=0).shape[0])}, indent=1))


if __name__ == "__main__":
    main()

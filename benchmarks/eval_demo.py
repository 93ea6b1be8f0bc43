"""Perplexity of the demo model (Gemma-3-270M) on WikiText-2 test, through the CLI.

    python benchmarks/eval_demo.py [--seqlen 512] [--max-windows 8] [--data PATH]

Prints one markdown row for BENCHMARKS.md: command, ppl, windows, tokens, seconds.
"""

import argparse
import json
import platform
import subprocess
import sys
import time

# The project's shared data folder sits beside the repository (never copied into it).
DEFAULT_DATA = "../shared/data/wikitext-2/test.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    cmd = ["sparsekit", "eval", "demo", "--data", args.data, "--seqlen", str(args.seqlen),
           "--max-windows", str(args.max_windows), "--dtype", args.dtype, "--json"]
    start = time.perf_counter()
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    wall = time.perf_counter() - start
    print(f"| `{' '.join(cmd[:-1])}` | {platform.processor() or platform.machine()} | {res['ppl']:.4f} | "
          f"{res['windows']} x {res['seqlen']} | {res['tokens']} | {res['seconds']:.1f} | "
          f"{res['load_seconds']:.1f} | {wall:.1f} |", flush=True)
    json.dump(res, sys.stderr, indent=1)


if __name__ == "__main__":
    main()

"""Peak host memory of writing and reading a statistics file with Hessians (no download).

    python benchmarks/stats_memory.py --model llama-3-8b                  # the real question (~16 GB RAM)
    python benchmarks/stats_memory.py --model llama-3-1b --layers 4       # smoke test
    python benchmarks/stats_memory.py --model llama-3-1b --layers 4 --mode collect   # all layers in memory first

Builds a random-weight model of a named shape (bfloat16, CPU), then does what
`sparsekit calibrate --hessian` does: the sequential engine runs every decoder layer on a tiny
token budget (memory does not depend on it) and each layer's statistics go to `StatsWriter` as
soon as they exist (`--mode stream`), or are all kept and written at the end (`--mode collect`,
the memory pattern of a non-streaming calibrate). Then it reads the file back as
`sparsekit prune --stats` does (`load_stats`, one linear at a time, every Hessian touched).

Peak resident memory is the kernel's high-water mark (VmHWM), reset between phases through
/proc/self/clear_refs (a sampling thread stands in where that is not allowed). Prints one JSON
object: model bytes, resident memory after building the model, and per phase the peak and the
peak above that baseline, plus the file size and the largest decoder layer's statistics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch

GIB = 2 ** 30


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """High-water mark of resident memory over a `with` block, in bytes."""

    def __enter__(self) -> "PeakRSS":
        self.peak = 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._sampler = None
        except OSError:
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS") * 1024)
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        if self._sampler is None:
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self.peak, _status_kib("VmRSS") * 1024)


def build(model: str, layers: int | None, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from sparsekit.workflows.bench import random_config

    config = random_config(model)
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def calibrate(model, path: Path, nsamples: int, seqlen: int, mode: str) -> dict:
    """`sparsekit calibrate --hessian` on random tokens: the engine feeds the writer."""
    from sparsekit.calibration.engine import run_sequential
    from sparsekit.files.statsfile import StatsWriter, fingerprint
    from sparsekit.anatomy import prunable_linears

    targets = prunable_linears(model)
    fp = fingerprint(model, targets)
    ids = torch.randint(0, model.config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    settings = {"data": "random tokens", "nsamples": nsamples, "seqlen": seqlen, "seed": 0, "sampling": "random",
                "bos": "never", "hessian": True}
    kept: dict = {}
    largest = 0

    def keep(index, linears, stats):
        nonlocal largest
        owners = {id(s): s for s in stats.values()}  # fp32 sq_norm, mean, m2 and the Hessian
        largest = max(largest, sum(4 * (3 * s.in_features + s.in_features ** 2) for s in owners.values()))
        if mode == "stream":
            writer.add_layer({n: s.to("cpu") for n, s in stats.items()})
        else:
            kept.update({n: s.to("cpu") for n, s in stats.items()})
        return False

    with StatsWriter(path, fp, settings) as writer:
        run_sequential(model, ids, targets, keep, batch_size=nsamples, hessian=True, modifies=False)
        if mode == "collect":
            writer.add_layer(kept)
            kept.clear()
    return {"fingerprint": fp, "names": list(targets), "layer_stats_bytes": largest}


def read_back(path: Path, fp: dict, names: list[str]) -> float:
    """`prune --stats`: one linear's statistics at a time, each Hessian used."""
    from sparsekit.files.statsfile import load_stats

    stats, _ = load_stats(path, fp, names, need_hessian=True)
    total = 0.0
    for name in names:
        total += float(stats[name].hessian.diagonal().sum())
    return total


def main() -> None:
    from sparsekit.workflows.bench import RANDOM_MODELS
    from sparsekit.dtypes import DTYPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b", help=f"{', '.join(RANDOM_MODELS)} or a config.json path")
    ap.add_argument("--layers", type=int, default=None, help="Override the number of decoder layers.")
    ap.add_argument("--nsamples", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--mode", default="stream", choices=["stream", "collect"])
    ap.add_argument("--dir", default=None, help="Where to write the statistics file (default: a temporary folder).")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    model = build(args.model, args.layers, DTYPES[args.dtype])
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "stats.safetensors"
        baseline = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        with PeakRSS() as save_peak:
            info = calibrate(model, path, args.nsamples, args.seqlen, args.mode)
        save_s = time.perf_counter() - start
        file_bytes = path.stat().st_size
        load_base = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        with PeakRSS() as load_peak:
            read_back(path, info["fingerprint"], info["names"])
        load_s = time.perf_counter() - start
    result = {
        "model": args.model, "layers": model.config.num_hidden_layers, "dtype": args.dtype, "mode": args.mode,
        "tokens": [args.nsamples, args.seqlen], "model_gib": round(model_bytes / GIB, 3),
        "rss_after_build_gib": round(baseline / GIB, 3),
        "stats_file_gib": round(file_bytes / GIB, 3),
        "largest_layer_stats_gib": round(info["layer_stats_bytes"] / GIB, 3),
        "calibrate_save": {"peak_rss_gib": round(save_peak.peak / GIB, 3),
                           "above_baseline_gib": round((save_peak.peak - baseline) / GIB, 3),
                           "seconds": round(save_s, 1)},
        "load": {"peak_rss_gib": round(load_peak.peak / GIB, 3),
                 "above_baseline_gib": round((load_peak.peak - load_base) / GIB, 3),
                 "seconds": round(load_s, 1)},
        "build_seconds": round(build_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

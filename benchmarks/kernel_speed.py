"""2:4 kernel benchmark: correctness, copy bandwidth, dense cuBLAS vs cuSPARSELt vs sparsekit's
Triton kernels on the Llama-3-8B linear shapes, and (--tune) the dispatch tables to paste.

GPU:   python3 benchmarks/kernel_speed.py --out results.json [--tune] [--budget 300]
Smoke: TRITON_INTERPRET=1 python3 benchmarks/kernel_speed.py --smoke   (CPU, tiny, no timing claims)

Timing: every variant is captured in a CUDA graph whose body calls it once per weight copy,
rotating over enough copies (>= --rotate-mb, default 400 MB) that L2 never holds the weights;
time = median over replays / number of copies (so launch costs are graph-replay costs, as in
the decode runtime). Bandwidth = minimum bytes (weights + x + y) / time, also as a fraction of
a measured device-to-device copy bandwidth (bytes read + written). A failing variant is
reported and skipped, never fatal; partial results are written after every shape.

--tune sweeps :data:`TUNE` in bfloat16 at every M of :data:`TUNE_MS` (decode sizes 1..256 and
prefill sizes), then times the chosen config per M in float16 as well, and prints, per dtype,
``DISPATCH[(major, minor, dtype)] = (...)`` for ``sparsekit/runtime/dispatch24.py``: for each
M the candidate (Triton config, or cuSPARSELt with the best Triton config as its fallback)
with the best *worst-case* speedup over the three shapes; M ranges with the same choice are
merged. An M whose best worst case is below 0.98x of dense is flagged. ``--budget`` stops
starting new measurements after that many seconds (the table then covers what was measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from sparsekit.kernels.panel24 import to_panels
from sparsekit.kernels.sparse24 import mask_24_magnitude, pack_24
from sparsekit.kernels.sparse24_triton import Sparse24Config as C
from sparsekit.kernels.sparse24_triton import sparse24_mm
from sparsekit.runtime.dispatch24 import DEFAULT_DISPATCH, PANEL_GROUPS

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N out, K in): qkvo-like, up/gate, down
MS = [1, 4, 16, 128, 2048]  # without --tune: the default configs only
TUNE_MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048, 8192]
PANEL_CHOICES = (PANEL_GROUPS,)
MIN_SPEEDUP = 0.98

# Tiles follow the layout rule bn * bg == 128 * num_warps unless marked (see Sparse24Config).
GEMV_TUNE = [
    C("gemv", bn=8, bg=64, num_warps=4),
    C("gemv", bn=16, bg=64, num_warps=8),
    C("gemv", bn=4, bg=64, num_warps=2),
    C("gemv", bn=8, bg=64, num_warps=4, occ=8),
    C("gemv", bn=8, bg=64, num_warps=4, prefetch=False),
    C("gemv", bn=8, bg=64, num_warps=4, split_k=1),
]
MMA_TUNE = [
    C("mma", bn=64, bg=16, num_warps=8, num_stages=3),
    C("mma", bn=64, bg=8, num_warps=4, num_stages=3),
    C("mma", bn=128, bg=8, num_warps=8, num_stages=3),
    C("mma", bn=64, bg=16, num_warps=8, num_stages=3, occ=8),
    C("mma", bn=64, bg=16, num_warps=8, num_stages=3, reduce="kernel"),
    C("mma", bn=64, bg=32, num_warps=4, num_stages=3),  # off the rule: larger steps
]
MMA_PREFILL_TUNE = [
    C("mma", bn=64, bg=16, num_warps=8, num_stages=3),
    C("mma", bn=128, bg=8, num_warps=8, num_stages=3),
    C("mma", bn=128, bg=16, num_warps=16, num_stages=3),
]
TUNE = (GEMV_TUNE + [replace(c, bm=bm) for c in MMA_TUNE for bm in (16, 32, 64, 128)]
        + [replace(c, bm=128, occ=2) for c in MMA_PREFILL_TUNE])
DEFAULT_CONFIGS = [C.parse(cfg) for _, _, cfg in DEFAULT_DISPATCH]


def bm_for(m: int) -> int:
    return 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128


def configs_for(m: int, configs) -> list:
    """Configs applicable at M: gemv for M <= 4; mma tiles with the bm that fits M."""
    out = []
    for cfg in configs:
        if cfg.kernel == "gemv":
            if m <= 4:
                out.append(cfg)
        elif cfg.bm == bm_for(m) and (m <= 256 or cfg.occ <= 2 or cfg in DEFAULT_CONFIGS):
            out.append(cfg)
    return list(dict.fromkeys(out))


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def time_fn(fn, reps=20) -> float:
    """Median seconds of fn() via CUDA events (fn is typically a graph replay)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth(dev) -> float:
    n = 1 << 28  # 512 MB of bf16
    a = torch.empty(n, dtype=torch.bfloat16, device=dev).normal_()
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a))
    return 2 * a.numel() * 2 / t  # read + write, bytes/s


def graph_time(call, copies) -> float:
    """Capture call(copy) for every weight copy into one CUDA graph; per-call seconds."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in copies[:2]:
            call(c)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in copies:
            call(c)
    t = time_fn(g.replay) / len(copies)
    del g
    return t


class Problem:
    """One (dtype, N, K, M): a random 2:4 weight in every form, x, and the fp64 reference."""

    def __init__(self, n, k, m, dtype, dev, rotate_mb):
        torch.manual_seed(n + k + m)
        w = torch.randn(n, k, device=dev, dtype=torch.float32)
        self.w = (w * mask_24_magnitude(w)).to(dtype)
        self.x = torch.randn(m, k, device=dev, dtype=dtype)
        self.n, self.k, self.m, self.rotate_mb = n, k, m, rotate_mb
        self.dense_bytes = n * k * 2
        self.io = (m * k + m * n) * 2
        self.ref = None
        p = to_panels(pack_24(self.w), PANEL_GROUPS)
        self.packed_bytes = p.values.numel() * 2 + p.meta.numel() * 2
        self.panels = [(p.values.clone(), p.meta.clone()) for _ in range(self._copies(self.packed_bytes))]
        self._dense = None
        self._cslt = None

    def _copies(self, nbytes):
        return max(2, math.ceil(self.rotate_mb * 2**20 / nbytes))

    def reference(self):
        if self.ref is None:
            self.ref = self.x.double() @ self.w.double().T
        return self.ref

    def variant(self, name):
        """(call, copies, bytes) of a variant: "dense", "cusparselt" or a config short form."""
        x, k, n = self.x, self.k, self.n
        if name == "dense":
            if self._dense is None:
                self._dense = [self.w.clone() for _ in range(self._copies(self.dense_bytes))]
            return (lambda c: x @ c.T), self._dense, self.dense_bytes + self.io
        if name == "cusparselt":
            from sparsekit.kernels import cusparselt

            if self._cslt is None:
                blob = cusparselt.compress(self.w)
                self._cslt = [blob.clone() for _ in range(self._copies(blob.numel() * 2))]
            return ((lambda c: cusparselt.linear(x, c, n)), self._cslt,
                    self.dense_bytes * 9 // 16 + self.io)
        cfg = C.parse(name)
        return ((lambda c: sparse24_mm(x, c[0], c[1], k, None, cfg)), self.panels,
                self.packed_bytes + self.io)

    def release(self):
        self._dense = self._cslt = self.panels = None


def measure(prob, name, bw, verbose=False) -> dict:
    row = dict(n=prob.n, k=prob.k, m=prob.m, variant=name)
    try:
        call, copies, nbytes = prob.variant(name)
        out = call(copies[0])
        row["rel_err"] = rel_err(out, prob.reference())
        row["ok"] = bool(torch.isfinite(out).all()) and row["rel_err"] < 2e-2
        t = graph_time(call, copies)
        row.update(us=t * 1e6, tb_s=nbytes / t / 1e12, frac_copy_bw=nbytes / t / bw)
    except Exception as e:  # noqa: BLE001 - reported, never fatal
        row["error"] = f"{type(e).__name__}: {e}"[:300]
        if verbose:
            traceback.print_exc()
    return row


def print_rows(rows, header=True):
    if header:
        print("| dtype | N x K | M | variant | us | speedup | TB/s | frac copy bw | rel err |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['dtype']} | {r['n']}x{r['k']} | {r['m']} | {r['variant']} | "
                  f"ERROR {r['error'][:100]} |")
            continue
        sp = r.get("speedup")
        print(f"| {r['dtype']} | {r['n']}x{r['k']} | {r['m']} | {r['variant']} | "
              f"{r.get('us', float('nan')):.1f} | {'-' if sp is None else f'{sp:.2f}'} | "
              f"{r.get('tb_s', float('nan')):.2f} | {r.get('frac_copy_bw', float('nan')):.2f}"
              f" | {r.get('rel_err', float('nan')):.1e} |", flush=True)


def sweep(dtype, ms, names_for, dev, bw, args, rows, t_start, res):
    dname = str(dtype).replace("torch.", "")
    for m in ms:
        for n, k in SHAPES:
            if args.budget and time.time() - t_start > args.budget:
                print(f"# budget of {args.budget:.0f} s reached: stopping before {dname} M={m}")
                return False
            try:
                prob = Problem(n, k, m, dtype, dev, args.rotate_mb)
            except Exception as e:  # noqa: BLE001
                print(f"setup failed {n}x{k} M={m}: {e}")
                continue
            new = []
            for name in ["dense", "cusparselt"] + names_for(m):
                row = measure(prob, name, bw, args.verbose)
                row["dtype"] = dname
                new.append(row)
            dense = next((r for r in new if r["variant"] == "dense" and "us" in r), None)
            for r in new:
                if "us" in r and dense:
                    r["speedup"] = dense["us"] / r["us"]
            print_rows(new, header=False)
            rows.extend(new)
            prob.release()
            del prob
            torch.cuda.empty_cache()
            with open(args.out, "w") as f:  # partial results survive a time limit
                json.dump({**res, "rows": rows, "partial": True}, f)
    return True


def worst_case(rows, dtype, m, variant):
    """Worst speedup over SHAPES of a variant at (dtype, M), None unless measured on all."""
    sp = [r.get("speedup") for r in rows if r["dtype"] == dtype and r["m"] == m
          and r["variant"] == variant and r.get("ok") and "speedup" in r]
    return min(sp) if len(sp) == len(SHAPES) else None


def choose_per_m(rows, dtype, ms):
    """Per M: (backend, triton config, worst-case speedup); cusparselt carries the best
    Triton config as its fallback."""
    choice = {}
    for m in ms:
        trit = {}
        for v in {r["variant"] for r in rows if r["dtype"] == dtype and r["m"] == m}:
            if v in ("dense", "cusparselt"):
                continue
            wc = worst_case(rows, dtype, m, v)
            if wc is not None:
                trit[v] = wc
        if not trit:
            continue
        best = max(trit, key=trit.get)
        cs = worst_case(rows, dtype, m, "cusparselt")
        if cs is not None and cs > trit[best]:
            choice[m] = ("cusparselt", best, cs)
        else:
            choice[m] = ("triton", best, trit[best])
    return choice


def table_from(choice):
    """Merge consecutive M with the same (backend, config) into DISPATCH entries."""
    ms = sorted(choice)
    table = []
    for i, m in enumerate(ms):
        backend, cfg, _ = choice[m]
        last = i == len(ms) - 1
        if not last and choice[ms[i + 1]][:2] == (backend, cfg):
            continue
        table.append((None if last else m, backend, cfg))
    return tuple(table)


def print_table(res, dtype, choice):
    cap = res["capability"]
    table = table_from(choice)
    print(f"\n# {res['device']}, {dtype}: per M, chosen path and its worst-case speedup over "
          f"{len(SHAPES)} shapes")
    for m in sorted(choice):
        backend, cfg, wc = choice[m]
        flag = "" if wc >= MIN_SPEEDUP else f"   <-- below {MIN_SPEEDUP}x of dense"
        print(f"#   M={m:5d}: {backend:10s} {cfg:40s} {wc:.2f}x{flag}")
    print(f"DISPATCH[({cap[0]}, {cap[1]}, {dtype!r})] = (")
    for entry in table:
        print(f"    {entry!r},")
    print(")")
    return table


def run_gpu(args):
    dev = torch.device("cuda")
    cap = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth(dev)
    print(f"# {name} (sm{cap[0]}{cap[1]}), copy bandwidth {bw / 1e12:.2f} TB/s, "
          f"torch {torch.__version__}", flush=True)
    import triton

    print(f"# triton {triton.__version__}")
    res = dict(device=name, capability=list(cap), copy_bw=bw, tune=args.tune)
    rows: list = []
    print_rows([], header=True)
    t0 = time.time()
    if not args.tune:
        names = lambda m: [c.short() for c in configs_for(m, DEFAULT_CONFIGS)]
        for dtype in args.dtypes:
            sweep(getattr(torch, dtype), MS, names, dev, bw, args, rows, t0, res)
        return {**res, "rows": rows}
    first, *others = args.dtypes
    sweep(getattr(torch, first), TUNE_MS, lambda m: [c.short() for c in configs_for(m, TUNE)],
          dev, bw, args, rows, t0, res)
    tables = {}
    choice = choose_per_m(rows, first, TUNE_MS)
    tables[first] = print_table(res, first, choice)
    for dtype in others:  # the same choices, measured (and if need be corrected) in dtype
        picks = {m: sorted({choice[m][1]} | {c.short() for c in configs_for(m, DEFAULT_CONFIGS)})
                 for m in choice}
        sweep(getattr(torch, dtype), sorted(picks), lambda m, p=picks: p[m], dev, bw, args, rows,
              t0, res)
        tables[dtype] = print_table(res, dtype, choose_per_m(rows, dtype, sorted(picks)))
    return {**res, "rows": rows, "tables": {k: [list(e) for e in v] for k, v in tables.items()}}


def run_smoke() -> int:
    """CPU + TRITON_INTERPRET=1: the default configs and a few tuning ones against the
    reference on tiny odd shapes; no timing."""
    from sparsekit.kernels.sparse24 import sparse24_matmul_reference

    failures = 0
    cfgs = [C("gemv", bn=4, bg=16, split_k=2), C("mma", bn=16, bg=16, bm=16, split_k=2),
            C("mma", bn=16, bg=32, bm=32, split_k=1, reduce="kernel")]
    for dtype in (torch.float32, torch.float16):
        for n, k, m in ((19, 100, 1), (40, 260, 3), (24, 132, 20)):
            torch.manual_seed(n * k + m)
            w = torch.randn(n, k)
            w = (w * mask_24_magnitude(w)).to(dtype)
            p = pack_24(w)
            pn = to_panels(p, PANEL_GROUPS)
            x = torch.randn(m, k).to(dtype)
            ref = x.double() @ w.double().T
            for cfg in cfgs:
                if cfg.kernel == "gemv" and m > 4:
                    continue
                try:
                    e = rel_err(sparse24_mm(x, pn.values, pn.meta, k, None, cfg), ref)
                    e2 = rel_err(sparse24_matmul_reference(x, p), ref)
                    ok = e < (1e-5 if dtype == torch.float32 else 3e-3)
                    failures += not ok
                    print(f"smoke {dtype} {n}x{k} M={m} {cfg.short()}: rel err {e:.1e} "
                          f"(reference {e2:.1e}) {'ok' if ok else 'FAIL'}")
                except Exception as ex:  # noqa: BLE001
                    failures += 1
                    print(f"smoke {dtype} {n}x{k} M={m} {cfg.short()}: ERROR {ex}")
    print("smoke:", "PASS" if failures == 0 else f"{failures} FAILURES")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="kernels_bench.json")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter run, tiny shapes")
    ap.add_argument("--tune", action="store_true", help="sweep TUNE and print DISPATCH tables")
    ap.add_argument("--budget", type=float, default=0.0,
                    help="seconds after which no new measurement starts (0: no limit)")
    ap.add_argument("--rotate-mb", type=float, default=400.0)
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"],
                    choices=["bfloat16", "float16"])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.smoke or not torch.cuda.is_available():
        if not args.smoke:
            print("no CUDA device: running --smoke")
        sys.exit(1 if run_smoke() else 0)
    res = run_gpu(args)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

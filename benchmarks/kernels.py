"""2:4 kernel benchmark: correctness, copy bandwidth, dense vs cuSPARSELt vs sparsekit Triton.

GPU:   python benchmarks/kernels.py --out results.json [--tune]
Smoke: TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   (CPU, tiny, no timing claims)

Timing method: every variant is captured in a CUDA graph whose body calls it once per
weight copy, rotating over enough copies (>= --rotate-mb, default 400 MB) that L2 (50 MB on
H100) never holds the weights; time = median over replays / number of copies. Bandwidth =
minimum bytes (weights + x + y) / time, reported against a measured D2D copy bandwidth
(bytes read + written). A failing variant is reported and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from sparsekit.kernels.sparse24 import mask_24_magnitude, pack_24  # noqa: E402
from sparsekit.kernels.sparse24_triton import Sparse24Config, sparse24_mm  # noqa: E402

SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # (N out, K in)
MS = [1, 4, 8, 16, 128, 2048, 8192]
TUNE = [Sparse24Config("gemv", bn=b, bg=128, split_k=s, num_warps=b)
        for b in (4, 8, 16) for s in (0, 1)] + \
       [Sparse24Config("dot", bn=b, bg=g, split_k=s, num_warps=w, num_stages=st)
        for b, g, w in ((64, 32, 4), (64, 64, 4), (128, 32, 8), (32, 64, 4))
        for s in (0, 1) for st in (2, 3)]


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def copy_bandwidth(dev) -> float:
    n = 1 << 28  # 512 MB of bf16
    a = torch.empty(n, dtype=torch.bfloat16, device=dev).normal_()
    b = torch.empty_like(a)
    t = time_fn(lambda: b.copy_(a), reps=20)
    return 2 * a.numel() * 2 / t  # read + write, bytes/s


def time_fn(fn, reps=50) -> float:
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
    return time_fn(g.replay, reps=20) / len(copies)


def make_variants(n, k, m, dtype, dev, rotate_mb, configs):
    """Returns (x, variants: name -> (call, copies, bytes)) sharing one random 2:4 weight."""
    torch.manual_seed(n + k + m)
    w = torch.randn(n, k, device=dev, dtype=torch.float32)
    w = (w * mask_24_magnitude(w)).to(dtype)
    x = torch.randn(m, k, device=dev, dtype=dtype)
    dense_bytes = n * k * 2
    n_copies = max(2, math.ceil(rotate_mb * 2**20 / (dense_bytes * 9 / 16)))
    io = (m * k + m * n) * 2
    p = pack_24(w)
    packed = [(p.values.clone(), p.meta.clone()) for _ in range(n_copies)]
    variants = {}
    nd = max(2, math.ceil(rotate_mb * 2**20 / dense_bytes))
    dense = [w.clone() for _ in range(nd)]
    variants["dense"] = (lambda c: x @ c.T, dense, dense_bytes + io, w)
    try:
        from torch.sparse import to_sparse_semi_structured
        cs = [to_sparse_semi_structured(w.clone()) for _ in range(n_copies)]
        variants["cusparselt"] = (lambda c: torch.nn.functional.linear(x, c), cs,
                                  dense_bytes * 9 // 16 + io, w)
    except Exception as e:  # noqa: BLE001
        variants["cusparselt"] = e
    if m <= 16:
        for cfg in configs:
            if cfg.kernel == "gemv" and m > 4:
                continue
            variants[f"s24[{cfg.short()}]"] = (
                (lambda c, cfg=cfg: sparse24_mm(x, c[0], c[1], k, None, cfg)), packed,
                p.values.numel() * 2 + p.meta.numel() * 2 + io, w)
    return x, variants


def run_gpu(args):
    dev = torch.device("cuda")
    cap = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth(dev)
    print(f"# {name} (sm{cap[0]}{cap[1]}), copy bandwidth {bw / 1e12:.2f} TB/s")
    from sparsekit.kernels.linear import DEFAULT_TRITON_CONFIGS

    default_cfgs = [Sparse24Config(**kw) for _, kw in DEFAULT_TRITON_CONFIGS]
    configs = TUNE if args.tune else default_cfgs
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes]:
        for n, k in SHAPES:
            for m in MS:
                try:
                    x, variants = make_variants(n, k, m, dtype, dev, args.rotate_mb, configs)
                except Exception as e:  # noqa: BLE001
                    print(f"setup failed {n}x{k} M={m}: {e}")
                    continue
                ref = None
                for vname, v in variants.items():
                    row = dict(dtype=str(dtype).split(".")[-1], n=n, k=k, m=m, variant=vname)
                    if isinstance(v, Exception):
                        row["error"] = f"{type(v).__name__}: {v}"[:200]
                        rows.append(row)
                        continue
                    call, copies, nbytes, w = v
                    try:
                        out = call(copies[0])
                        if ref is None:
                            ref = x.double() @ w.double().T
                        row["rel_err"] = rel_err(out, ref)
                        row["ok"] = bool(torch.isfinite(out).all()) and row["rel_err"] < 2e-2
                        t = graph_time(call, copies)
                        row.update(us=t * 1e6, tb_s=nbytes / t / 1e12, frac_copy_bw=nbytes / t / bw)
                    except Exception as e:  # noqa: BLE001
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                        if args.verbose:
                            traceback.print_exc()
                    rows.append(row)
                del variants
                torch.cuda.empty_cache()
                for r in rows:
                    if (r["n"], r["k"], r["m"], r["dtype"]) == (n, k, m, str(dtype).split(".")[-1]):
                        if "us" in r:
                            d = next((q for q in rows if q["variant"] == "dense" and q["n"] == n
                                      and q["k"] == k and q["m"] == m and q["dtype"] == r["dtype"]
                                      and "us" in q), None)
                            r["speedup"] = d["us"] / r["us"] if d else None
                print_rows([r for r in rows if (r["n"], r["k"], r["m"]) == (n, k, m)
                            and r["dtype"] == str(dtype).split(".")[-1]], header=False)
                with open(args.out, "w") as f:  # partial results survive a time limit
                    json.dump(dict(device=name, capability=list(cap), copy_bw=bw, rows=rows,
                                   partial=True), f)
    return dict(device=name, capability=list(cap), copy_bw=bw, rows=rows)


def print_rows(rows, header=True):
    if header:
        print("| dtype | N x K | M | variant | us | speedup | TB/s | frac copy bw | rel err |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['dtype']} | {r['n']}x{r['k']} | {r['m']} | {r['variant']} | "
                  f"ERROR {r['error'][:80]} |")
            continue
        sp = r.get("speedup")
        print(f"| {r['dtype']} | {r['n']}x{r['k']} | {r['m']} | {r['variant']} | "
              f"{r.get('us', float('nan')):.1f} | {sp if sp is None else f'{sp:.2f}'} | "
              f"{r.get('tb_s', float('nan')):.2f} | {r.get('frac_copy_bw', float('nan')):.2f}"
              f" | {r.get('rel_err', float('nan')):.1e} |")


def derive_tables(res):
    """Per (capability, dtype): best backend per M (worst case over shapes) and, per M, the
    best Triton config; printed in the format of DISPATCH / TRITON_CONFIGS in linear.py."""
    cap = tuple(res["capability"])
    out = {}
    for dtype in sorted({r["dtype"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["dtype"] == dtype and "us" in r and r.get("ok")]
        choice = []
        for m in MS:
            cand = {}
            for fam in ("dense", "cusparselt", "s24"):
                worst = []
                for n, k in SHAPES:
                    rs = [r for r in rows if r["m"] == m and (r["n"], r["k"]) == (n, k)
                          and r["variant"].split("[")[0] == fam]
                    if rs:
                        worst.append(max(r.get("speedup") or 0 for r in rs))
                if len(worst) == len(SHAPES):
                    cand[fam] = min(worst)
            best = max(cand, key=cand.get) if cand else "dense"
            if cand.get(best, 0) <= 1.0:
                best = "dense"  # never slower than dense
            choice.append((m, {"s24": "triton"}.get(best, best)))
        table = []
        for i, (m, b) in enumerate(choice):
            nxt = choice[i + 1][1] if i + 1 < len(choice) else None
            if b != nxt:
                table.append((m if nxt is not None else None, b))
        out[f"{cap[0]},{cap[1]},{dtype}"] = table
        print(f"DISPATCH[({cap[0]}, {cap[1]}, {dtype!r})] = {tuple(table)!r}")
        best_cfg = []
        for m in [m for m in MS if m <= 16]:
            scores = {}
            for r in rows:
                if r["m"] == m and r["variant"].startswith("s24["):
                    scores.setdefault(r["variant"], []).append(r.get("speedup") or 0)
            full = {v: min(s) for v, s in scores.items() if len(s) == len(SHAPES)}
            if full:
                v = max(full, key=full.get)
                best_cfg.append((m, v, full[v]))
        print(f"# best Triton config per M (worst-case speedup over shapes), {dtype}: "
              f"{best_cfg}")
        out[f"{cap[0]},{cap[1]},{dtype}:triton"] = best_cfg
    return out


def run_smoke():
    """CPU + TRITON_INTERPRET=1: checks every variant against the reference, no timing."""
    from sparsekit.kernels.sparse24 import sparse24_matmul_reference

    failures = 0
    for dtype in (torch.float32, torch.float16):
        for n, k, m in ((19, 100, 1), (40, 260, 3), (24, 132, 16)):
            torch.manual_seed(n * k + m)
            w = torch.randn(n, k)
            w = (w * mask_24_magnitude(w)).to(dtype)
            p = pack_24(w)
            x = torch.randn(m, k).to(dtype)
            ref = x.double() @ w.double().T
            for cfg in [Sparse24Config("gemv", bn=4, bg=16, split_k=2, num_warps=4),
                        Sparse24Config("dot", bn=16, bg=16, split_k=1)]:
                if cfg.kernel == "gemv" and m > 4:
                    continue
                try:
                    e = rel_err(sparse24_mm(x, p.values, p.meta, k, None, cfg), ref)
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
    ap.add_argument("--tune", action="store_true", help="sweep TUNE tile configs")
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
    print()
    print_rows(res["rows"])
    res["tables"] = derive_tables(res)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Compile every Triton kernel for a GPU target without a GPU; report registers, spills and
what the compiler made of the loads and the matmul.

    python benchmarks/compile_check.py [--arch 90] [--tune] [--dump DIR] [--filter TEXT]

Triton compiles ahead of time for any NVIDIA target with its bundled ptxas, so this checks on a
CPU-only machine that the kernels build with the installed Triton (the GPU machines may carry
another version: install that one into a separate folder and put it first on PYTHONPATH) and
that no configuration spills registers to local memory. Per kernel and configuration it prints
registers, spill bytes, and from the TTGIR/PTX: layout conversions and shared-memory
allocations (``cvt``/``smem``), asynchronous copies (``async``), the matmul instruction
(``wgmma`` or ``mma``) and the 16-byte global loads (``ld.v4``). Pointers are compiled as
16-byte aligned and N, K, G and the strides as multiples of 16, which is what the launchers see
for model shapes. Exits 1 if any configuration fails to compile or spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsekit.kernels import obs_triton
from sparsekit.kernels.s24_gemv import s24_gemv_kernel
from sparsekit.kernels.s24_mma import s24_mma_kernel
from sparsekit.kernels.s24_tiles import s24_reduce_kernel
from sparsekit.kernels.sparse24_triton import s24_decompress_kernel

S24_SIG = {"X": "*{t}", "V": "*{t}", "MT": "*i16", "OUT": "*{t}", "WS": "*{w}", "CNT": "*{c}",
           "B": "*{t}", "M": "i32", "N": "i32", "K": "i32", "G": "i32", "ITERS": "i32",
           "S": "i32", "stride_xm": "i32", "stride_om": "i32"}
S24_ALIGNED = {"X", "V", "MT", "OUT", "WS", "CNT", "B", "N", "K", "G", "stride_xm", "stride_om"}
OBS_SIG = {"W": "*fp32", "stride_w": "i32", "P": "*i8", "stride_p": "i32", "E": "*fp32",
           "stride_e": "i32", "U": "*fp32", "stride_u": "i32", "D": "*fp32", "INVD2": "*fp32",
           "rows": "i32", "count": "i32"}


def resources(cubin: bytes) -> tuple[int | None, int | None]:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None, None
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def anatomy(kernel) -> str:
    """What the compiler did, counted in the TTGIR and PTX."""
    ttgir, ptx = kernel.asm.get("ttgir", ""), kernel.asm.get("ptx", "")
    mma = "wgmma" if "wgmma" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "-")
    v4 = len(re.findall(r"ld\.global[.A-Za-z0-9_:]*\.v4", ptx))
    return (f"cvt {ttgir.count('ttg.convert_layout')}, smem {ttgir.count('ttg.local_alloc')}, "
            f"async {ttgir.count('async_copy') + ttgir.count('async_tma')}, {mma}, "
            f"ld.v4 {v4}")


def compile_one(fn, sig, constexprs, arch, num_warps, num_stages, aligned=()):
    full = dict(sig)
    full.update({k: "constexpr" for k in constexprs})
    names = list(full)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned if a in names}
    src = ASTSource(fn=fn, signature=full, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def s24_jobs(configs, panel_groups=(64,)):
    jobs = []
    for dtype in ("bf16", "fp16"):
        for cfg in configs:
            for pg in panel_groups:
                if pg % cfg.bg and cfg.bg % pg:
                    continue
                bms = (1, 2, 4) if cfg.kernel == "gemv" else (cfg.bm,)
                for bm in bms:
                    for reduce in (0, 1):
                        sig = {k: v.format(t=dtype, w="fp32" if reduce else dtype,
                                           c="i32" if reduce else dtype)
                               for k, v in S24_SIG.items()}
                        const = dict(BM=bm, BN=cfg.bn, BG=cfg.bg, PG=pg, PREFETCH=cfg.prefetch,
                                     REDUCE=reduce, HAS_BIAS=False)
                        kern = s24_gemv_kernel
                        if cfg.kernel == "gemv":  # 16-bit x goes in as int64 (one per group)
                            sig["X"] = "*i64"
                            const["X_PACKED"] = True
                        else:
                            kern = s24_mma_kernel
                            const.update(GROUP_M=8, UPCAST=False)
                        jobs.append((f"s24 {dtype} {cfg.short()} pg{pg} BM={bm} reduce={reduce}",
                                     kern, sig, const, cfg.num_warps, cfg.num_stages))
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    ap.add_argument("--tune", action="store_true", help="every tuning configuration of kernels.py")
    ap.add_argument("--dump", help="write each kernel's TTGIR and PTX into this folder")
    ap.add_argument("--filter", default="", help="only jobs whose name contains this text")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from kernels import DEFAULT_CONFIGS, PANEL_CHOICES, TUNE  # benchmarks/kernel_speed.py

    configs = list(TUNE) if args.tune else list(DEFAULT_CONFIGS)
    jobs = s24_jobs(configs, PANEL_CHOICES)
    for dtype in ("bf16", "fp16"):  # the helper kernels of the launchers
        jobs.append((f"s24 {dtype} decompress", s24_decompress_kernel,
                     {"V": f"*{dtype}", "MT": "*i16", "W": f"*{dtype}", "N": "i32", "K": "i32",
                      "G": "i32", "stride_wn": "i32"}, dict(BN=16, BG=16, PG=16), 4, 1))
        jobs.append((f"s24 {dtype} split-K reduce", s24_reduce_kernel,
                     {"WS": "*fp32", "OUT": f"*{dtype}", "B": f"*{dtype}", "M": "i32", "N": "i32",
                      "S": "i32", "stride_om": "i32"}, dict(HAS_BIAS=True, BLOCK=1024), 4, 1))
    for nm in ((0, 0), (2, 4), (4, 8)):
        jobs.append((f"obs block N:M={nm[0]}:{nm[1]}", obs_triton.obs_block_kernel, OBS_SIG,
                     dict(NM_N=nm[0], NM_M=nm[1], BR=16, BC=128), 4, 2))
    jobs = [j for j in jobs if args.filter in j[0]]
    failures = 0
    print(f"# Triton {triton.__version__}, target sm_{args.arch}")
    for name, fn, sig, const, warps, stages in jobs:
        try:
            aligned = S24_ALIGNED if name.startswith("s24") else ()
            k = compile_one(fn, sig, const, args.arch, warps, stages, aligned)
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        regs, spill = resources(k.asm["cubin"])
        bad = spill is not None and spill > 0
        failures += bad
        print(f"{'SPILL' if bad else 'ok   '} {name}: regs {regs}, spill {spill}, {anatomy(k)}")
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            base = os.path.join(args.dump, re.sub(r"[^A-Za-z0-9_.=-]+", "_", name))
            for ext in ("ttgir", "ptx"):
                with open(f"{base}.{ext}", "w") as f:
                    f.write(k.asm.get(ext, ""))
    print(f"{len(jobs) - failures} of {len(jobs)} compiled without spills")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""Compile every Triton kernel for a GPU target without a GPU, and report registers and spills.

    python benchmarks/compile_check.py [--arch 90] [--tune]

Triton compiles ahead of time for any NVIDIA target with its bundled ptxas, so this checks on a
CPU-only machine that the kernels build with the installed Triton (the GPU machines may carry
another version) and that no configuration spills registers to local memory. Prints one line
per kernel and configuration; exits 1 if any fails to compile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sparsekit.kernels import obs_triton, sparse24_triton as s24  # noqa: E402

S24_SIG = {"X": "*{t}", "V": "*{t}", "MT": "*i16", "OUT": "*{o}", "B": "*{t}", "M": "i32", "N": "i32",
           "K": "i32", "G": "i32", "ITERS": "i32", "stride_xm": "i32", "stride_vn": "i32",
           "stride_mn": "i32", "stride_os": "i32", "stride_om": "i32"}
OBS_SIG = {"W": "*fp32", "stride_w": "i32", "P": "*i8", "stride_p": "i32", "E": "*fp32",
           "stride_e": "i32", "U": "*fp32", "stride_u": "i32", "D": "*fp32", "INVD2": "*fp32",
           "rows": "i32", "count": "i32"}


def resources(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return "resources unknown"
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", text)
    return f"regs {m.group(1)}, local (spill) bytes {m.group(2)}" if m else "resources unknown"


def compile_one(fn, sig, constexprs, arch, num_warps, num_stages=2):
    full = dict(sig)
    full.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=full, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    ap.add_argument("--tune", action="store_true", help="also every tuning configuration of kernels.py")
    args = ap.parse_args()
    from sparsekit.kernels.linear import DEFAULT_TRITON_CONFIGS

    configs = [s24.Sparse24Config(**kw) for _, kw in DEFAULT_TRITON_CONFIGS]
    if args.tune:
        sys.path.insert(0, os.path.dirname(__file__))
        from kernels import TUNE

        configs += TUNE
    jobs = []
    for dtype in ("bf16", "fp16"):
        for cfg in configs:
            for m in ((1, 2, 4) if cfg.kernel == "gemv" else (16,)):
                bm = triton.next_power_of_2(m) if cfg.kernel == "gemv" else max(16, m)
                for partial in (False, True):
                    out = "fp32" if partial else dtype
                    sig = {k: v.format(t=dtype, o=out) for k, v in S24_SIG.items()}
                    kern = s24._s24_gemv_kernel if cfg.kernel == "gemv" else s24._s24_dot_kernel
                    const = dict(BM=bm, BN=cfg.bn, BG=cfg.bg, PARTIAL=partial, HAS_BIAS=False)
                    if cfg.kernel == "dot":
                        const["FP32_DOT"] = False
                    jobs.append((f"s24 {dtype} {cfg.short()} BM={bm} partial={partial}", kern, sig,
                                 const, cfg.num_warps, cfg.num_stages))
    for nm in ((0, 0), (2, 4), (4, 8)):
        jobs.append((f"obs block N:M={nm[0]}:{nm[1]}", obs_triton._obs_block_kernel, OBS_SIG,
                     dict(NM_N=nm[0], NM_M=nm[1], BR=16, BC=128), 4, 2))
    failures = 0
    print(f"# Triton {triton.__version__}, target sm_{args.arch}")
    for name, fn, sig, const, warps, stages in jobs:
        try:
            k = compile_one(fn, sig, const, args.arch, warps, stages)
            print(f"ok    {name}: {resources(k.asm['cubin'])}")
        except Exception as e:  # noqa: BLE001
            failures += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    print(f"{len(jobs) - failures} of {len(jobs)} compiled")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

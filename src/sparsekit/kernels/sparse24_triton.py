"""Launchers for the 2:4 Triton kernels on the panel layout (:mod:`sparsekit.kernels.panel24`).

* :func:`sparse24_mm` -- ``y = x @ W.T (+ bias)`` for 2-D x [M, K]; the kernel is picked by
  :class:`Sparse24Config`: ``"gemv"`` (:mod:`~sparsekit.kernels.s24_gemv`, CUDA cores, M <= 4)
  or ``"mma"`` (:mod:`~sparsekit.kernels.s24_mma`, tensor cores, any M).
* :func:`sparse24_decompress` -- the dense [N, K] weight (tests, the dense twin of a model;
  the runtime never decompresses to multiply).

Accumulation is fp32; the output has x's dtype. Split-K partials are combined in a fixed
order (no atomics on outputs), so results are bitwise reproducible for a given config.
Everything also runs under ``TRITON_INTERPRET=1`` on CPU tensors (fp32, fp16; bf16 through
``upcast``), which is how the tests check the kernels against the torch reference.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparsekit.kernels.s24_gemv import s24_gemv_kernel
from sparsekit.kernels.s24_mma import s24_mma_kernel
from sparsekit.kernels.s24_tiles import s24_reduce_kernel, expand_dense, load_tile

REDUCE = {"none": 0, "serial": 1, "kernel": 2}
GEMV_MAX_M = 4


@dataclass(frozen=True)
class Sparse24Config:
    """Tile configuration of one kernel launch.

    ``kernel`` "gemv" (M <= 4) or "mma"; ``bn`` weight rows and ``bg`` groups (4*bg dense
    columns) per step, ``bg`` a power of two that divides or is a multiple of the panel width;
    ``bm`` x rows per tile (mma only; >= 16); ``split_k`` K splits, 0 = choose them so that
    there are about ``occ`` programs per SM; ``reduce`` how splits are combined: "serial" (the
    last arriving split sums, one kernel) or "kernel" (a second kernel); ``prefetch`` loads
    the next weight tile before using the current one.

    Layout rule (16-bit weights, from the sm_90 TTGIR): ``bn * bg == 128 * num_warps`` gives
    every thread exactly one 16-byte vector of values and its one meta word per step, and the
    decode then needs no data exchange between threads."""

    kernel: str = "gemv"
    bn: int = 8
    bg: int = 64
    bm: int = 16
    split_k: int = 0
    occ: int = 4
    reduce: str = "serial"
    prefetch: bool = True
    num_warps: int = 4
    num_stages: int = 1

    def short(self) -> str:
        s = f"{self.kernel}:bn{self.bn}:bg{self.bg}"
        if self.kernel == "mma":
            s += f":bm{self.bm}"
        split = f"sk{self.split_k}" if self.split_k else f"o{self.occ}"
        return (s + f":{split}:{self.reduce[0]}:p{int(self.prefetch)}"
                f":w{self.num_warps}:s{self.num_stages}")

    @classmethod
    def parse(cls, text: str) -> Sparse24Config:
        """Inverse of :meth:`short` (the form the dispatch tables and the benchmark use)."""
        parts = text.split(":")
        kw: dict = {"kernel": parts[0]}
        fields = {"bn": "bn", "bg": "bg", "bm": "bm", "sk": "split_k", "o": "occ",
                  "w": "num_warps", "s": "num_stages"}
        for p in parts[1:]:
            if p in ("s", "k"):
                kw["reduce"] = {"s": "serial", "k": "kernel"}[p]
            elif p in ("p0", "p1"):
                kw["prefetch"] = p == "p1"
            else:
                key = p.rstrip("0123456789")
                if key not in fields or key == p:
                    raise ValueError(f"bad field {p!r} in kernel config {text!r}")
                kw[fields[key]] = int(p[len(key):])
        return cls(**kw)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_split(tiles: int, steps: int, device: torch.device, per_sm: int = 3,
                 min_steps: int = 4, max_split: int = 32) -> int:
    """K splits so that ``tiles * split`` is about ``per_sm`` programs per SM, each split
    keeping at least ``min_steps`` K steps. 1 on CPU."""
    if device.type != "cuda":
        return 1
    want = triton.cdiv(per_sm * sm_count(device.index or 0), tiles)
    return int(max(1, min(want, steps // min_steps, max_split)))


_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tile counters for the "serial" split-K reduction, one buffer per device.
    Every launch leaves them zero; launches that use them must not run concurrently (one
    stream, or one CUDA graph replay at a time)."""
    key = str(device)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("split-K counters must be allocated before CUDA graph capture: "
                               "run the model once before capturing")
        buf = torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def default_config(m: int) -> Sparse24Config:
    """Untuned defaults (layout-rule tiles), used where the runtime has no measured table."""
    if m <= GEMV_MAX_M:
        return Sparse24Config("gemv", bn=8, bg=64, num_warps=4)
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    return Sparse24Config("mma", bn=64, bg=16, bm=bm, num_warps=8, num_stages=3)


def _check(x, values, meta, in_features, cfg):
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must be [M, {in_features}], got {tuple(x.shape)}")
    if values.dim() != 3 or meta.dim() != 3 or meta.dtype != torch.int16:
        raise ValueError("values must be [P, N, 2*PG] and meta int16 [P, N, PG/4] (panel layout)")
    pg = values.shape[2] // 2
    if cfg.bg < 4 or cfg.bg & (cfg.bg - 1) or (pg % cfg.bg and cfg.bg % pg):
        raise ValueError(f"tile of {cfg.bg} groups: must be a power of two >= 4 that divides "
                         f"or is a multiple of the panel width {pg}")
    if values.numel() >= 2**31:
        raise ValueError("weights of 2**31 or more values are not supported (int32 offsets)")
    if cfg.kernel == "gemv" and x.shape[0] > GEMV_MAX_M:
        raise ValueError(f"gemv kernel is for M <= {GEMV_MAX_M}, got M={x.shape[0]}")
    if cfg.kernel not in ("gemv", "mma"):
        raise ValueError(f"unknown kernel {cfg.kernel!r}")
    if cfg.kernel == "mma" and (cfg.bm < 16 or cfg.bn < 16):
        raise ValueError("mma tiles need bm >= 16 and bn >= 16")
    return pg


def sparse24_mm(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                bias: torch.Tensor | None = None, config: Sparse24Config | None = None,
                upcast: bool | None = None) -> torch.Tensor:
    """``y = x @ W.T (+ bias)``, x [M, K] (any M for "mma", M <= 4 for "gemv"), W in panel
    layout (``values`` [P, N, 2*PG], ``meta`` [P, N, PG/4]); y [M, N] in x's dtype.
    ``upcast`` (mma) multiplies in fp32: default for fp32 x and under the interpreter."""
    m = x.shape[0]
    cfg = config or default_config(m)
    pg = _check(x, values, meta, in_features, cfg)
    if x.stride(-1) != 1:
        x = x.contiguous()
    n = values.shape[1]
    g = values.shape[0] * pg
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return out
    steps = triton.cdiv(g, cfg.bg)
    if cfg.kernel == "gemv":
        bm = triton.next_power_of_2(m)
        tiles = triton.cdiv(n, cfg.bn)
    else:
        bm = cfg.bm
        tiles = triton.cdiv(n, cfg.bn) * triton.cdiv(m, bm)
    split = cfg.split_k or choose_split(tiles, steps, x.device, per_sm=cfg.occ)
    split = max(1, min(split, steps))
    iters = triton.cdiv(steps, split)
    split = triton.cdiv(steps, iters)  # no empty splits
    reduce = 0 if split == 1 else REDUCE[cfg.reduce]
    ws = out if reduce == 0 else torch.empty((split, m, n), device=x.device,
                                             dtype=torch.float32)
    cnt = _counters(x.device, tiles) if reduce == 1 else out
    has_bias = bias is not None
    b = bias if has_bias else out
    common = dict(BM=bm, BN=cfg.bn, BG=cfg.bg, PG=pg, PREFETCH=cfg.prefetch, REDUCE=reduce,
                  HAS_BIAS=has_bias, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    args = (x, values, meta, out, ws, cnt, b, m, n, in_features, g, iters, split,
            x.stride(0), out.stride(0))
    if cfg.kernel == "gemv":
        packed = x.dtype in (torch.float16, torch.bfloat16)
        if packed:  # one int64 per group of 4 columns (see s24_gemv._x_columns)
            if x.dtype != values.dtype:
                raise ValueError(f"x is {x.dtype} but the weight is {values.dtype}")
            if x.stride(0) % 4 or x.data_ptr() % 8:
                x = x.contiguous()
            args = (x.view(torch.int64),) + args[1:13] + (x.stride(0) // 4, out.stride(0))
        s24_gemv_kernel[(tiles, split)](*args, X_PACKED=packed, **common)
    else:
        if upcast is None:
            upcast = x.dtype == torch.float32 or interpreting()
        s24_mma_kernel[(tiles, split)](*args, GROUP_M=8, UPCAST=upcast, **common)
    if reduce == 2:
        block = 1024
        s24_reduce_kernel[(triton.cdiv(m * n, block),)](
            ws, out, b, m, n, split, out.stride(0), HAS_BIAS=has_bias, BLOCK=block,
            num_warps=4)
    return out


@triton.jit
def s24_decompress_kernel(V, MT, W, N, K, G, stride_wn, BN: tl.constexpr, BG: tl.constexpr,
                           PG: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    g0 = tl.program_id(1) * BG
    vals, words = load_tile(V, MT, rn, g0, G, N, BN, BG, PG)
    dense = expand_dense(vals, words, BN, BG)
    ok = 4 * g0 + tl.arange(0, 4 * BG)
    tl.store(W + rn[:, None] * stride_wn + ok[None, :], dense,
             mask=(rn < N)[:, None] & (ok < K)[None, :])


def sparse24_decompress(values: torch.Tensor, meta: torch.Tensor, in_features: int,
                        bn: int = 16) -> torch.Tensor:
    """Dense [N, K] weight from the panel layout, one Triton launch (no host sync)."""
    p, n, vw = values.shape
    pg = vw // 2
    bg = min(pg, 32)
    w = torch.empty((n, in_features), device=values.device, dtype=values.dtype)
    grid = (triton.cdiv(n, bn), p * pg // bg)
    s24_decompress_kernel[grid](values, meta, w, n, in_features, p * pg, w.stride(0),
                                 BN=bn, BG=bg, PG=pg, num_warps=4)
    return w


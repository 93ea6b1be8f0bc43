"""Triton kernels for ``y = x @ W.T`` with W in the sparsekit 2:4 layout (see ``sparse24.py``).

Decode (M = 1..16) is memory-bound: the time floor is the bytes of W over HBM bandwidth, and
2:4 moves 9/16 of the dense bytes. The kernels are built so that every byte comes in through
wide coalesced loads and the per-value decode is a handful of register ops:

* Each program owns ``BN`` output rows and walks K in steps of ``BG`` groups (``4*BG`` dense
  columns). Per step it loads a ``[BN, 2*BG]`` tile of ``values`` (each row a contiguous run
  of ``4*BG`` bytes: 16-byte vector loads, full 128-byte lines across a warp) and a
  ``[BN, BG/4]`` tile of ``meta`` (one int16 per 4 groups, also contiguous). The tile is
  reshaped to ``[BN, BG, 2]`` and split into the low/high slot values in registers.
* Indices are decoded with a shift and masks: ``nib = word >> 4*(g % 4) & 15``,
  ``i0 = nib & 3``, ``i1 = nib >> 2``. No lookup table, no gather from memory.
  Each meta element is repeated 4x along K with ``tl.join`` (in-thread) rather than
  broadcast+reshape, which Triton lowers through shared memory.
* Layout rule found by reading the sm_90 TTGIR/SASS (compiled here without a GPU): for
  16-bit weights use ``bg = 128`` and ``bn = num_warps`` in the gemv kernel. Then one warp
  owns one row per step, each lane holds exactly one 16-byte value vector (4 groups) and
  its one int16 of meta, and the only cross-lane traffic left is the small ``x`` slice
  (values stream LDG.128 straight into FMAs; 40 registers, no spills). Larger ``bn`` per
  warp makes Triton shuffle the decoded indices or the values through shared memory.
* ``x`` for the step is one contiguous ``[BM, 4*BG]`` load (L1/L2 resident, evict-last),
  split into the 4 in-group lanes ``x0..x3`` in registers. Because ``i0 in {0,1,2}`` and
  ``i1 in {1,2,3}``, each kept value picks its activation with two selects.
* ``gemv`` kernel (M <= 4): fp32 FMAs into a ``[BM, BN, BG]`` register accumulator, reduced
  across lanes once after the K loop (no per-step shuffles).
* ``dot`` kernel (M up to 16): the tile is expanded to dense ``[BN, 4*BG]`` in registers
  (``where(col == i0, v0, where(col == i1, v1, 0))``) and fed to ``tl.dot`` with
  ``x.T`` padded to 16 columns: the tensor cores absorb the M-fold FMA work, so the cost per
  weight byte stays flat from M = 1 to 16 while the decode cost is paid once per value.
* Split-K: for tall-skinny shapes (e.g. 4096 x 14336) there are too few row tiles to keep
  every SM streaming, so K is cut into ``split_k`` ranges; partial fp32 sums go to a
  workspace and a tiny second kernel adds them (deterministic, no atomics, so bf16 works on
  any GPU) and applies bias and the output cast. With ``split_k == 1`` the main kernel writes
  the output directly.

Accumulation is always fp32. Everything also runs under ``TRITON_INTERPRET=1`` on CPU
tensors (fp32, fp16), which is how the tests check it against the torch reference.
Only long-standing Triton APIs are used (``tl.split``/``tl.reshape``/``tl.dot``/
``eviction_policy``), so Triton 3.x from about 3.2 on compiles it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _load_wtile(V, MT, rn, nmask, g0, G, stride_vn, stride_mn,
                BN: tl.constexpr, BG: tl.constexpr):
    """Load one K step of W: slot values v0/v1 [BN, BG] (storage dtype) and in-group
    columns i0/i1 [BN, BG] (int32)."""
    oh = 2 * g0 + tl.arange(0, 2 * BG)
    vals = tl.load(V + rn[:, None] * stride_vn + oh[None, :],
                   mask=nmask[:, None] & (oh[None, :] < 2 * G), other=0.0,
                   eviction_policy="evict_first")
    v0, v1 = tl.split(tl.reshape(vals, (BN, BG, 2)))
    ow = g0 // 4 + tl.arange(0, BG // 4)
    words = tl.load(MT + rn[:, None] * stride_mn + ow[None, :],
                    mask=nmask[:, None] & (ow[None, :] < G // 4), other=0,
                    eviction_policy="evict_first").to(tl.int32)
    # repeat each meta element 4x along K with joins (in-thread), not broadcast+reshape:
    # Triton keeps joins in the load's layout, so the indices line up with the values
    words = tl.reshape(tl.join(words, words), (BN, BG // 2))
    words = tl.reshape(tl.join(words, words), (BN, BG))
    nib = (words >> ((tl.arange(0, BG) % 4) * 4)[None, :]) & 15
    return v0, v1, nib & 3, nib >> 2


@triton.jit
def _fma_row(acc, X, row, M, K, g0, v0, v1, i0, i1, stride_xm, BG: tl.constexpr):
    """acc [BN, BG] += v0 * x[row, 4g+i0] + v1 * x[row, 4g+i1] (fp32); x picked by selects."""
    ok = 4 * g0 + tl.arange(0, 4 * BG)
    xv = tl.load(X + row * stride_xm + ok, mask=(ok < K) & (ok * 0 + row < M), other=0.0,
                 eviction_policy="evict_last")
    xe, xo = tl.split(tl.reshape(xv, (BG, 2, 2)))  # xe: cols {0,2}, xo: cols {1,3}
    x0, x2 = tl.split(xe)
    x1, x3 = tl.split(xo)
    x0 = x0.to(tl.float32)[None, :]
    x1 = x1.to(tl.float32)[None, :]
    x2 = x2.to(tl.float32)[None, :]
    x3 = x3.to(tl.float32)[None, :]
    xs0 = tl.where(i0 == 0, x0, tl.where(i0 == 1, x1, x2))
    xs1 = tl.where(i1 == 3, x3, tl.where(i1 == 2, x2, x1))
    return acc + v0 * xs0 + v1 * xs1


@triton.jit
def _store_row(OUT, B, acc, row, pid_s, rn, nmask, M, stride_os, stride_om,
               PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr):
    y = tl.sum(acc, axis=1)
    mask = nmask & (rn * 0 + row < M)
    if not PARTIAL:
        if HAS_BIAS:
            y += tl.load(B + rn, mask=nmask, other=0.0).to(tl.float32)
        tl.store(OUT + row * stride_om + rn, y.to(OUT.dtype.element_ty), mask=mask)
    else:
        tl.store(OUT + pid_s * stride_os + row * stride_om + rn, y, mask=mask)


@triton.jit
def _s24_gemv_kernel(X, V, MT, OUT, B, M, N, K, G, ITERS,
                     stride_xm, stride_vn, stride_mn, stride_os, stride_om,
                     BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
                     PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr):
    """CUDA-core kernel for M <= 4: one [BN, BG] fp32 accumulator per activation row
    (explicit, so every tensor in the loop shares the layout of the weight tile)."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    acc0 = tl.zeros((BN, BG), dtype=tl.float32)
    acc1 = tl.zeros((BN, BG), dtype=tl.float32)
    acc2 = tl.zeros((BN, BG), dtype=tl.float32)
    acc3 = tl.zeros((BN, BG), dtype=tl.float32)
    g_start = pid_s * ITERS * BG
    for it in range(ITERS):
        g0 = g_start + it * BG
        v0, v1, i0, i1 = _load_wtile(V, MT, rn, nmask, g0, G, stride_vn, stride_mn, BN, BG)
        v0 = v0.to(tl.float32)
        v1 = v1.to(tl.float32)
        acc0 = _fma_row(acc0, X, 0, M, K, g0, v0, v1, i0, i1, stride_xm, BG)
        if BM > 1:
            acc1 = _fma_row(acc1, X, 1, M, K, g0, v0, v1, i0, i1, stride_xm, BG)
        if BM > 2:
            acc2 = _fma_row(acc2, X, 2, M, K, g0, v0, v1, i0, i1, stride_xm, BG)
            acc3 = _fma_row(acc3, X, 3, M, K, g0, v0, v1, i0, i1, stride_xm, BG)
    _store_row(OUT, B, acc0, 0, pid_s, rn, nmask, M, stride_os, stride_om, PARTIAL, HAS_BIAS)
    if BM > 1:
        _store_row(OUT, B, acc1, 1, pid_s, rn, nmask, M, stride_os, stride_om, PARTIAL,
                   HAS_BIAS)
    if BM > 2:
        _store_row(OUT, B, acc2, 2, pid_s, rn, nmask, M, stride_os, stride_om, PARTIAL,
                   HAS_BIAS)
        _store_row(OUT, B, acc3, 3, pid_s, rn, nmask, M, stride_os, stride_om, PARTIAL,
                   HAS_BIAS)


@triton.jit
def _s24_dot_kernel(X, V, MT, OUT, B, M, N, K, G, ITERS,
                    stride_xm, stride_vn, stride_mn, stride_os, stride_om,
                    BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr,
                    PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, FP32_DOT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    nmask = rn < N
    rm = tl.arange(0, BM)
    mmask = rm < M
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    col = tl.arange(0, 4)[None, None, :]
    g_start = pid_s * ITERS * BG
    for it in range(ITERS):
        g0 = g_start + it * BG
        oh = 2 * g0 + tl.arange(0, 2 * BG)
        vals = tl.load(V + rn[:, None] * stride_vn + oh[None, :],
                       mask=nmask[:, None] & (oh[None, :] < 2 * G), other=0.0,
                       eviction_policy="evict_first")
        v0, v1 = tl.split(tl.reshape(vals, (BN, BG, 2)))
        ow = g0 // 4 + tl.arange(0, BG // 4)
        words = tl.load(MT + rn[:, None] * stride_mn + ow[None, :],
                        mask=nmask[:, None] & (ow[None, :] < G // 4), other=0,
                        eviction_policy="evict_first").to(tl.int32)
        words = tl.reshape(tl.broadcast_to(words[:, :, None], (BN, BG // 4, 4)), (BN, BG))
        nib = (words >> ((tl.arange(0, BG) % 4) * 4)[None, :]) & 15
        i0 = (nib & 3)[:, :, None]
        i1 = (nib >> 2)[:, :, None]
        zero = tl.zeros((BN, BG, 4), dtype=vals.dtype)
        dense = tl.where(col == i0, v0[:, :, None], tl.where(col == i1, v1[:, :, None], zero))
        w = tl.reshape(dense, (BN, 4 * BG))
        ok = 4 * g0 + tl.arange(0, 4 * BG)
        xt = tl.load(X + rm[None, :] * stride_xm + ok[:, None],
                     mask=mmask[None, :] & (ok[:, None] < K), other=0.0,
                     eviction_policy="evict_last")
        if FP32_DOT:
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)
    omask = nmask[:, None] & mmask[None, :]
    if not PARTIAL:
        if HAS_BIAS:
            acc += tl.load(B + rn, mask=nmask, other=0.0).to(tl.float32)[:, None]
        tl.store(OUT + rm[None, :] * stride_om + rn[:, None],
                 acc.to(OUT.dtype.element_ty), mask=omask)
    else:
        tl.store(OUT + pid_s * stride_os + rm[None, :] * stride_om + rn[:, None], acc,
                 mask=omask)


@triton.jit
def _s24_reduce_kernel(WS, OUT, B, MN, N, S, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = o < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(WS + s * MN + o, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(B + o % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + o, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _s24_decompress_kernel(V, MT, W, N, K, G, stride_vn, stride_mn, stride_wn,
                           BN: tl.constexpr, BG: tl.constexpr):
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = rn < N
    g0 = tl.program_id(1) * BG
    oh = 2 * g0 + tl.arange(0, 2 * BG)
    vals = tl.load(V + rn[:, None] * stride_vn + oh[None, :],
                   mask=nmask[:, None] & (oh[None, :] < 2 * G), other=0.0)
    v0, v1 = tl.split(tl.reshape(vals, (BN, BG, 2)))
    ow = g0 // 4 + tl.arange(0, BG // 4)
    words = tl.load(MT + rn[:, None] * stride_mn + ow[None, :],
                    mask=nmask[:, None] & (ow[None, :] < G // 4), other=0).to(tl.int32)
    words = tl.reshape(tl.broadcast_to(words[:, :, None], (BN, BG // 4, 4)), (BN, BG))
    nib = (words >> ((tl.arange(0, BG) % 4) * 4)[None, :]) & 15
    i0 = (nib & 3)[:, :, None]
    i1 = (nib >> 2)[:, :, None]
    col = tl.arange(0, 4)[None, None, :]
    zero = tl.zeros((BN, BG, 4), dtype=vals.dtype)
    dense = tl.reshape(tl.where(col == i0, v0[:, :, None],
                                tl.where(col == i1, v1[:, :, None], zero)), (BN, 4 * BG))
    ok = 4 * g0 + tl.arange(0, 4 * BG)
    tl.store(W + rn[:, None] * stride_wn + ok[None, :], dense,
             mask=nmask[:, None] & (ok[None, :] < K))


# ----------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class Sparse24Config:
    """Tile configuration. ``kernel``: "gemv" (CUDA-core FMA, M <= 4) or "dot" (tensor
    cores, M <= 16). ``bn`` rows and ``bg`` groups (4*bg dense columns) per step; ``bg`` is a
    power of two >= 8. ``split_k`` 0 means "choose from the SM count"."""

    kernel: str = "gemv"
    bn: int = 16
    bg: int = 128
    split_k: int = 0
    num_warps: int = 4
    num_stages: int = 2

    def short(self) -> str:
        return (f"{self.kernel}:bn{self.bn}:bg{self.bg}:sk{self.split_k}"
                f":w{self.num_warps}:s{self.num_stages}")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_config(m: int, n: int, k: int) -> Sparse24Config:
    """Untuned defaults (to be replaced by the benchmark's measured table)."""
    if m <= 4:
        return Sparse24Config("gemv", bn=4, bg=128, num_warps=4)
    return Sparse24Config("dot", bn=64, bg=32, num_warps=4)


def choose_split(cfg: Sparse24Config, n: int, g: int, device: torch.device) -> int:
    """Cut K so that there are about 4 programs per SM, keeping >= 4 steps per split."""
    if cfg.split_k > 0:
        return cfg.split_k
    if device.type != "cuda":
        return 1
    tiles = triton.cdiv(n, cfg.bn)
    steps = triton.cdiv(g, cfg.bg)
    want = triton.cdiv(4 * _sm_count(device.index or 0), tiles)
    return int(max(1, min(want, steps // 4, 16)))


def sparse24_mm(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                bias: torch.Tensor | None = None,
                config: Sparse24Config | None = None) -> torch.Tensor:
    """``y = x @ W.T (+ bias)`` for 2-D ``x`` [M, K] (M <= 16) and packed W; y in x.dtype."""
    m, k = x.shape
    if k != in_features:
        raise ValueError(f"x has {k} features, the weight expects {in_features}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    n, kh = values.shape
    g = kh // 2
    cfg = config or default_config(m, n, k)
    if cfg.kernel == "gemv":
        bm = triton.next_power_of_2(max(m, 1))
        kern = _s24_gemv_kernel
    else:
        bm = max(16, triton.next_power_of_2(max(m, 1)))
        kern = _s24_dot_kernel
    if m > bm or (cfg.kernel == "gemv" and m > 4):
        raise ValueError(f"{cfg.kernel} kernel is for small M, got M={m}")
    steps = triton.cdiv(g, cfg.bg)
    split = max(1, min(choose_split(cfg, n, g, x.device), steps))
    iters = triton.cdiv(steps, split)
    split = triton.cdiv(steps, iters)  # no empty splits
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    target = out if split == 1 else torch.empty((split, m, n), device=x.device,
                                                dtype=torch.float32)
    has_bias = bias is not None
    b = bias if has_bias else out
    grid = (triton.cdiv(n, cfg.bn), split)
    extra = {}
    if kern is _s24_dot_kernel:
        extra["FP32_DOT"] = x.dtype == torch.float32
    kern[grid](x, values, meta, target, b, m, n, k, g, iters,
               x.stride(0), values.stride(0), meta.stride(0),
               target.stride(0) if split > 1 else 0, n,
               BM=bm, BN=cfg.bn, BG=cfg.bg, PARTIAL=split > 1, HAS_BIAS=has_bias,
               num_warps=cfg.num_warps, num_stages=cfg.num_stages, **extra)
    if split > 1:
        block = 1024
        _s24_reduce_kernel[(triton.cdiv(m * n, block),)](
            target, out, b, m * n, n, split, HAS_BIAS=has_bias, BLOCK=block, num_warps=4)
    return out


def sparse24_decompress(values: torch.Tensor, meta: torch.Tensor, in_features: int,
                        bn: int = 32, bg: int = 64) -> torch.Tensor:
    """Dense [N, K] weight from the packed form, one Triton launch (no host sync)."""
    n, kh = values.shape
    g = kh // 2
    w = torch.empty((n, in_features), device=values.device, dtype=values.dtype)
    grid = (triton.cdiv(n, bn), triton.cdiv(g, bg))
    _s24_decompress_kernel[grid](values, meta, w, n, in_features, g, values.stride(0),
                                 meta.stride(0), w.stride(0), BN=bn, BG=bg, num_warps=4)
    return w

"""CUDA-core 2:4 kernel for M = 1..4 rows of x (decode): ``y = x @ W.T (+ bias)``.

At M = 1 the product is bound by the bytes of W (9/16 of dense), so the kernel is built to
keep HBM streaming and to spend few instructions per weight:

* Each program owns ``BN`` rows of W and walks its K range in steps of ``BG`` groups. In the
  panel layout a step is ``BG/PG`` contiguous blocks of ``BN*2*PG`` values (one block when
  ``BG == PG``) plus the matching meta blocks: 16-byte vector loads, ``evict_first``.
* ``PREFETCH``: the next step's tile is loaded before the current one is used (registers
  double-buffered by hand, independent of the compiler's pipeliner), so a program always
  has two tiles of loads in flight.
* Per kept value the activation is *selected*, not the weight expanded: ``i0 in {0,1,2}`` and
  ``i1 in {1,2,3}``, so each slot picks its x with two selects on the 16-bit patterns, then one
  conversion to fp32 and one FMA: 2 FMAs per group of 4 dense weights.
* x (16-bit) is read as one int64 per group by the thread that owns the group's weights (see
  :func:`_x_packed`), so the loop has no shared-memory exchange and no barrier.
* fp32 accumulators ``[BN, BG]`` (one per row of x), reduced across lanes once after the loop.
* Split-K (grid axis 1) for shapes with too few row blocks to fill the GPU; partial sums are
  combined deterministically by :func:`~sparsekit.kernels.s24_tiles.finish_tile`.

Layout rule (16-bit weights; read off the sm_90 TTGIR of Triton 3.6 and 3.8): with
``BN * BG == 128 * num_warps`` every thread holds exactly one 16-byte vector of values (4
groups) and its one int16 meta word per step, and the loop body has no layout conversion.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sparsekit.kernels.s24_tiles import finish_tile, load_tile, nibbles, split_slots


@triton.jit
def _quad_join(a, b, c, d, BN: tl.constexpr, BG: tl.constexpr):
    """Four [BN, BG/4] tensors -> [BN, BG] with element 4e + j taken from the j-th input at
    e. Built with the same join/reshape chain as :func:`nibbles`, so the result has the
    nibbles' layout (each thread holds the same groups)."""
    lo = tl.reshape(tl.join(a, c), (a.shape[0], BG // 2))
    hi = tl.reshape(tl.join(b, d), (a.shape[0], BG // 2))
    return tl.reshape(tl.join(lo, hi), (a.shape[0], BG))


@triton.jit
def _x_packed(X, row, M, K, g0, stride_xm, BN: tl.constexpr, BG: tl.constexpr):
    """16-bit x viewed as int64 (one element per group of 4 columns): the raw 16-bit patterns
    of the four in-group columns x0..x3 for groups g0 .. g0+BG-1, as [BN, BG] int16 tensors
    lined up with the weight tile. Each group's 8 bytes are loaded by the thread that holds
    the group's weights (four loads in the meta words' layout, joined like the nibbles): no
    shared-memory exchange, no barrier."""
    grp = 4 * (g0 // 4 + tl.arange(0, BG // 4))[None, :]  # first group of each quad
    base = X + row * stride_xm + grp
    kg = K // 4  # groups that exist in x (K is a multiple of 4)
    q0 = tl.load(base, mask=(grp < kg) & (row < M), other=0, eviction_policy="evict_last")
    q1 = tl.load(base + 1, mask=(grp + 1 < kg) & (row < M), other=0,
                 eviction_policy="evict_last")
    q2 = tl.load(base + 2, mask=(grp + 2 < kg) & (row < M), other=0,
                 eviction_policy="evict_last")
    q3 = tl.load(base + 3, mask=(grp + 3 < kg) & (row < M), other=0,
                 eviction_policy="evict_last")
    xg = _quad_join(q0, q1, q2, q3, BN, BG)
    # int64 -> int16 truncates: the four 16-bit patterns, lowest column first
    return (xg.to(tl.int16), (xg >> 16).to(tl.int16), (xg >> 32).to(tl.int16),
            (xg >> 48).to(tl.int16))


@triton.jit
def _x_plain(X, row, M, K, g0, stride_xm, BG: tl.constexpr):
    """Any x dtype: the slice is loaded once and split into x0..x3 [1, BG]; Triton
    redistributes it to the threads (through shared memory)."""
    ok = 4 * g0 + tl.arange(0, 4 * BG)
    xv = tl.load(X + row * stride_xm + ok, mask=(ok < K) & (row < M), other=0.0,
                 eviction_policy="evict_last")
    xe, xo = tl.split(tl.reshape(xv, (BG, 2, 2)))  # xe: columns {0, 2}, xo: {1, 3}
    x0, x2 = tl.split(xe)
    x1, x3 = tl.split(xo)
    return x0[None, :], x1[None, :], x2[None, :], x3[None, :]


@triton.jit
def _row_fma(acc, X, row, M, K, g0, v0, v1, nib, stride_xm, BN: tl.constexpr,
             BG: tl.constexpr, X_PACKED: tl.constexpr, XDT: tl.constexpr):
    """acc [BN, BG] += v0 * x[row, 4g + i0] + v1 * x[row, 4g + i1] (fp32)."""
    if X_PACKED:
        x0, x1, x2, x3 = _x_packed(X, row, M, K, g0, stride_xm, BN, BG)
    else:
        x0, x1, x2, x3 = _x_plain(X, row, M, K, g0, stride_xm, BG)
    # i0 = nib & 3 in {0, 1, 2}; i1 = nib >> 2 in {1, 2, 3}: two selects per slot
    xs0 = tl.where((nib & 2) != 0, x2, tl.where((nib & 1) != 0, x1, x0))
    xs1 = tl.where((nib & 8) != 0, tl.where((nib & 4) != 0, x3, x2), x1)
    if X_PACKED:  # raw 16-bit patterns -> x's dtype, after the selects
        xs0 = xs0.to(XDT, bitcast=True)
        xs1 = xs1.to(XDT, bitcast=True)
    return acc + v0 * xs0.to(tl.float32) + v1 * xs1.to(tl.float32)


@triton.jit
def _step(acc0, acc1, acc2, acc3, X, M, K, g0, vals, words, stride_xm,
          BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, X_PACKED: tl.constexpr):
    v0, v1 = split_slots(vals, BN, BG)
    xdt = vals.dtype
    v0 = v0.to(tl.float32)
    v1 = v1.to(tl.float32)
    nib = nibbles(words, BN, BG)
    acc0 = _row_fma(acc0, X, 0, M, K, g0, v0, v1, nib, stride_xm, BN, BG, X_PACKED, xdt)
    if BM > 1:
        acc1 = _row_fma(acc1, X, 1, M, K, g0, v0, v1, nib, stride_xm, BN, BG, X_PACKED, xdt)
    if BM > 2:
        acc2 = _row_fma(acc2, X, 2, M, K, g0, v0, v1, nib, stride_xm, BN, BG, X_PACKED, xdt)
        acc3 = _row_fma(acc3, X, 3, M, K, g0, v0, v1, nib, stride_xm, BN, BG, X_PACKED, xdt)
    return acc0, acc1, acc2, acc3


@triton.jit
def s24_gemv_kernel(X, V, MT, OUT, WS, CNT, B, M, N, K, G, ITERS, S, stride_xm, stride_om,
                     BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, PG: tl.constexpr,
                     PREFETCH: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     X_PACKED: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    acc0 = tl.zeros((BN, BG), dtype=tl.float32)
    acc1 = tl.zeros((BN, BG), dtype=tl.float32)
    acc2 = tl.zeros((BN, BG), dtype=tl.float32)
    acc3 = tl.zeros((BN, BG), dtype=tl.float32)
    g_first = pid_s * ITERS * BG
    g_stop = tl.minimum(g_first + ITERS * BG, G)
    if PREFETCH:
        vals, words = load_tile(V, MT, rn, g_first, g_stop, N, BN, BG, PG)
        for it in range(ITERS):
            g0 = g_first + it * BG
            cur_vals = vals
            cur_words = words
            vals, words = load_tile(V, MT, rn, g0 + BG, g_stop, N, BN, BG, PG)
            acc0, acc1, acc2, acc3 = _step(acc0, acc1, acc2, acc3, X, M, K, g0, cur_vals,
                                           cur_words, stride_xm, BM, BN, BG, X_PACKED)
    else:
        for it in range(ITERS):
            g0 = g_first + it * BG
            vals, words = load_tile(V, MT, rn, g0, g_stop, N, BN, BG, PG)
            acc0, acc1, acc2, acc3 = _step(acc0, acc1, acc2, acc3, X, M, K, g0, vals, words,
                                           stride_xm, BM, BN, BG, X_PACKED)
    y0 = tl.sum(acc0, axis=1)
    if BM == 1:
        acc = y0[:, None]
    elif BM == 2:
        acc = tl.join(y0, tl.sum(acc1, axis=1))
    else:
        y1 = tl.sum(acc1, axis=1)
        y2 = tl.sum(acc2, axis=1)
        y3 = tl.sum(acc3, axis=1)
        acc = tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), (BN, 4))
    rm = tl.arange(0, BM)
    finish_tile(acc, OUT, WS, CNT, B, rn, rm, M, N, pid_n, pid_s, S, stride_om, REDUCE,
                HAS_BIAS)


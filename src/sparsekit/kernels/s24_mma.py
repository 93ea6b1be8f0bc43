"""Tensor-core 2:4 kernel for M = 2 .. prefill sizes: ``y = x @ W.T (+ bias)`` with the 2:4
tile decompressed in registers and multiplied in the same program (W never exists dense in
memory).

Orientation: the weight is the left operand, ``acc[BN, BM] += W_tile[BN, 4*BG] @ x_tile^T``.
Hopper's wgmma needs the left operand's rows in multiples of 64 and only the left operand can
come from registers, which is where the decompressed tile is; the batch (M) is the right
operand's column count, at least 16 (smaller M is masked with zeros: the tensor cores have
compute to spare at decode sizes).

* Packed tiles come from the panel layout (one contiguous block per tile when ``BG == PG``),
  ``evict_first``; ``PREFETCH`` loads the next tile before expanding the current one.
* Expansion: 2 slot values + 4-bit index per group -> 4 dense columns with 6 selects, kept
  in the loading thread (``tl.join``), see :func:`~sparsekit.kernels.s24_tiles.expand_dense`.
* x tiles ``[4*BG, BM]`` are plain loads feeding ``tl.dot`` (pipelined by Triton with
  ``num_stages``); they stay in L2 across the programs of a row block.
* Grid: ``(N tiles x M tiles)`` in GROUP_M-swizzled order (L2 reuse of weight tiles across x
  tiles at prefill sizes) times ``S`` K splits; splits are combined deterministically by
  :func:`~sparsekit.kernels.s24_tiles.finish_tile`.
* ``UPCAST``: multiply in fp32 (``input_precision="ieee"``): fp32 inputs, and 16-bit inputs
  under the Triton interpreter, whose bf16 dot is wrong.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sparsekit.kernels.s24_tiles import expand_dense, finish_tile, load_tile, tile_order


@triton.jit
def _mma_step(acc, X, rm, M, K, g0, vals, words, stride_xm, BN: tl.constexpr,
              BG: tl.constexpr, UPCAST: tl.constexpr):
    w = expand_dense(vals, words, BN, BG)
    ok = 4 * g0 + tl.arange(0, 4 * BG)
    xt = tl.load(X + rm[None, :] * stride_xm + ok[:, None],
                 mask=(rm < M)[None, :] & (ok < K)[:, None], other=0.0)
    if UPCAST:
        return tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(w, xt, acc)


@triton.jit
def s24_mma_kernel(X, V, MT, OUT, WS, CNT, B, M, N, K, G, ITERS, S, stride_xm, stride_om,
                    BM: tl.constexpr, BN: tl.constexpr, BG: tl.constexpr, PG: tl.constexpr,
                    GROUP_M: tl.constexpr, PREFETCH: tl.constexpr, REDUCE: tl.constexpr,
                    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr):
    num_n = tl.cdiv(N, BN)
    num_m = tl.cdiv(M, BM)
    tile = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_n, pid_m = tile_order(tile, num_n, num_m, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    g_first = pid_s * ITERS * BG
    g_stop = tl.minimum(g_first + ITERS * BG, G)
    if PREFETCH:
        vals, words = load_tile(V, MT, rn, g_first, g_stop, N, BN, BG, PG)
        for it in range(ITERS):
            g0 = g_first + it * BG
            cur_vals = vals
            cur_words = words
            vals, words = load_tile(V, MT, rn, g0 + BG, g_stop, N, BN, BG, PG)
            acc = _mma_step(acc, X, rm, M, K, g0, cur_vals, cur_words, stride_xm, BN, BG,
                            UPCAST)
    else:
        for it in range(ITERS):
            g0 = g_first + it * BG
            vals, words = load_tile(V, MT, rn, g0, g_stop, N, BN, BG, PG)
            acc = _mma_step(acc, X, rm, M, K, g0, vals, words, stride_xm, BN, BG, UPCAST)
    finish_tile(acc, OUT, WS, CNT, B, rn, rm, M, N, tile, pid_s, S, stride_om, REDUCE,
                HAS_BIAS)

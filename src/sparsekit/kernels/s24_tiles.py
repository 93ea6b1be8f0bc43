"""Triton building blocks shared by the 2:4 kernels: loading a tile of the panel layout,
decoding its metadata, expanding it to dense, and finishing a split-K output tile.

Layout: :mod:`sparsekit.kernels.panel24` (values ``[P, N, 2*PG]``, meta int16 ``[P, N, PG/4]``).
A tile is ``BN`` rows by ``BG`` groups (``4*BG`` dense columns) starting at group ``g0``, a
multiple of ``BG``; ``BG`` divides the panel width ``PG`` (the tile is one contiguous block when
``BG == PG``) or is a multiple of it (the tile is ``BG/PG`` contiguous blocks).

Metadata decode. Meta word ``e`` of a row holds groups ``4e..4e+3``; nibble ``j`` (bits
``4j..4j+3``) is ``i0 | i1 << 2`` with ``i0 < i1`` the in-group columns of slots 0 and 1, so
``i0 in {0,1,2}`` and ``i1 in {1,2,3}``. Each word is repeated 4x along K with two
``tl.join`` (which Triton keeps in the loading thread's registers, unlike broadcast+reshape),
so nibble ``g`` lines up with the values of group ``g`` in the same thread.

Split-K finish (``REDUCE``): 0 = no split, store ``y`` (+ bias, cast) directly; 1 = "last
arriver reduces": every split stores its fp32 partial to a workspace ``[S, M, N]``, then
(after a CTA barrier) increments a per-tile counter with one acq_rel atomic; the split that
sees ``S - 1`` sums the S partials **in index order 0..S-1** (so the result does not depend
on which split finished last: deterministic), adds the bias, stores ``y`` and resets the
counter to 0 for the next launch. No atomics touch the output and nobody spins. 2 = store
the partial only; a separate kernel (:func:`s24_reduce_kernel`) sums in the same order.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_tile(V, MT, rn, g0, g_stop, N, BN: tl.constexpr, BG: tl.constexpr,
              PG: tl.constexpr):
    """Raw tile at group ``g0``: values [BN, 2*BG] (storage dtype) and meta words
    [BN, BG/4] (int32). Rows >= N and tiles with ``g0 >= g_stop`` load as zeros (no traffic).
    ``BG`` divides ``PG`` (a tile inside one panel) or is a multiple of it (``BG/PG`` whole
    panels, loaded as [BN, BG/PG, 2*PG] and merged). Offsets are int32: the launcher checks
    that the weight has fewer than 2**31 values."""
    if BG <= PG:
        live = (rn < N) & (g0 < g_stop)
        panel = g0 // PG
        local = tl.multiple_of(g0 % PG, BG)  # g0 is a multiple of BG, which divides PG
        oh = 2 * local + tl.arange(0, 2 * BG)
        vals = tl.load(V + panel * N * (2 * PG) + rn[:, None] * (2 * PG) + oh[None, :],
                       mask=live[:, None], other=0.0, eviction_policy="evict_first")
        ow = tl.multiple_of(local // 4, BG // 4) + tl.arange(0, BG // 4)
        words = tl.load(MT + panel * N * (PG // 4) + rn[:, None] * (PG // 4) + ow[None, :],
                        mask=live[:, None], other=0x4444, eviction_policy="evict_first")
    else:
        NP: tl.constexpr = BG // PG
        panels = g0 // PG + tl.arange(0, NP)
        live3 = (rn < N)[:, None, None] & (panels * PG < g_stop)[None, :, None]
        voff = (panels[None, :, None] * N * (2 * PG) + rn[:, None, None] * (2 * PG)
                + tl.arange(0, 2 * PG)[None, None, :])
        vals = tl.load(V + voff, mask=live3, other=0.0, eviction_policy="evict_first")
        vals = tl.reshape(vals, (BN, 2 * BG))
        moff = (panels[None, :, None] * N * (PG // 4) + rn[:, None, None] * (PG // 4)
                + tl.arange(0, PG // 4)[None, None, :])
        words = tl.load(MT + moff, mask=live3, other=0x4444, eviction_policy="evict_first")
        words = tl.reshape(words, (BN, BG // 4))
    return vals, words.to(tl.int32)


@triton.jit
def nibbles(words, BN: tl.constexpr, BG: tl.constexpr):
    """Meta words [BN, BG/4] -> nibbles [BN, BG] (int32, ``i0 | i1 << 2`` per group)."""
    w = tl.reshape(tl.join(words, words), (BN, BG // 2))
    w = tl.reshape(tl.join(w, w), (BN, BG))
    return (w >> ((tl.arange(0, BG) % 4) * 4)[None, :]) & 15


@triton.jit
def split_slots(vals, BN: tl.constexpr, BG: tl.constexpr):
    """Values [BN, 2*BG] -> (slot 0, slot 1), each [BN, BG]."""
    return tl.split(tl.reshape(vals, (BN, BG, 2)))


@triton.jit
def expand_dense(vals, words, BN: tl.constexpr, BG: tl.constexpr):
    """Dense tile [BN, 4*BG] in natural column order (column ``4g + c`` of the tile):
    ``d_c = v0 if i0 == c else (v1 if i1 == c else 0)``. With ``i0 = nib & 3 in {0,1,2}`` and
    ``i1 = nib >> 2 in {1,2,3}`` every test is one or two bits of the nibble."""
    v0, v1 = split_slots(vals, BN, BG)
    nib = nibbles(words, BN, BG)
    b0 = (nib & 1) != 0  # i0 == 1
    b1 = (nib & 2) != 0  # i0 == 2
    b2 = (nib & 4) != 0
    b3 = (nib & 8) != 0  # i1 == 3 iff b2 & b3; i1 == 2 iff b3 & !b2; i1 == 1 iff b2 & !b3
    zero = tl.zeros_like(v0)
    d0 = tl.where(b0 | b1, zero, v0)
    d1 = tl.where(b0, v0, tl.where(b2 & ~b3, v1, zero))
    d2 = tl.where(b1, v0, tl.where(b3 & ~b2, v1, zero))
    d3 = tl.where(b2 & b3, v1, zero)
    # join(join(a, c), join(b, d)) flattens to a, b, c, d along the last two dims
    return tl.reshape(tl.join(tl.join(d0, d2), tl.join(d1, d3)), (BN, 4 * BG))


@triton.jit
def finish_tile(acc, OUT, WS, CNT, B, rn, rm, M, N, tile, pid_s, S, stride_om,
                REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Write the fp32 tile ``acc`` [BN, BM] of ``y[rm, rn]`` (see the module docstring)."""
    mask = (rn < N)[:, None] & (rm < M)[None, :]
    if REDUCE == 0:
        y = acc
        if HAS_BIAS:
            y += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
        tl.store(OUT + rm[None, :] * stride_om + rn[:, None], y.to(OUT.dtype.element_ty),
                 mask=mask)
    else:
        part = rm[None, :] * N + rn[:, None]
        mn = M * N
        tl.store(WS + pid_s * mn + part, acc, mask=mask)
        if REDUCE == 1:
            tl.debug_barrier()  # every thread's partial is written before the release
            done = tl.atomic_add(CNT + tile, 1, sem="acq_rel", scope="gpu")
            if done == S - 1:
                y = tl.zeros_like(acc)
                for s in range(S):
                    y += tl.load(WS + s * mn + part, mask=mask, other=0.0, cache_modifier=".cg")
                if HAS_BIAS:
                    y += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
                tl.store(OUT + rm[None, :] * stride_om + rn[:, None],
                         y.to(OUT.dtype.element_ty), mask=mask)
                tl.atomic_xchg(CNT + tile, 0)


@triton.jit
def s24_reduce_kernel(WS, OUT, B, M, N, S, stride_om, HAS_BIAS: tl.constexpr,
                       BLOCK: tl.constexpr):
    """``y = sum_s WS[s] (+ bias)`` for REDUCE == 2, partials summed in index order."""
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mn = M * N
    mask = o < mn
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(S):
        acc += tl.load(WS + s * mn + o, mask=mask, other=0.0)
    n = o % N
    if HAS_BIAS:
        acc += tl.load(B + n, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + (o // N) * stride_om + n, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def tile_order(pid, num_n, num_m, GROUP_M: tl.constexpr):
    """(pid_n, pid_m) of program ``pid``: groups of GROUP_M row tiles of x walk the N tiles
    together, so a weight tile is reused from L2 by the x tiles of its group."""
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    size = tl.minimum(num_m - first_m, GROUP_M)
    local = pid % per_group
    return local // size, first_m + local % size



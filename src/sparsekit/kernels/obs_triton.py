"""Triton kernel for the column loop inside one SparseGPT block (the OBS updates).

Inside a block of B columns SparseGPT walks the columns one by one: prune column i (its mask
entries), turn the pruned values into errors ``e = w_i * pruned / U_ii`` and subtract
``e * U[i, i:]`` from the block's remaining columns. Rows never interact, so one program
holds a tile of rows x B columns in registers and runs the whole loop there: one launch per
block instead of several small launches per column (which is what dominates the plain-torch
loop on a GPU: about 1.2 M columns for a Llama-3-8B).

For N:M the mask of each group of M columns is chosen when the loop reaches the group, from
the current (already updated) weights with score ``(w * invd2) * w``: a column is pruned when
fewer than N columns of its group rank below it (ties: the lower column ranks lower), which
is exactly a stable sort's N lowest. Unstructured masks are chosen per block beforehand and
passed in.

The reference is the torch loop in :mod:`sparsekit.pruning.sparsegpt`; the tests check the two
against each other under ``TRITON_INTERPRET=1`` on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def obs_block_kernel(W, stride_w, P, stride_p, E, stride_e, U, stride_u, D, INVD2,
                      rows, count,
                      NM_N: tl.constexpr, NM_M: tl.constexpr,
                      BR: tl.constexpr, BC: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.arange(0, BC)
    cmask = c < count
    tile = (r < rows)[:, None] & cmask[None, :]
    w = tl.load(W + r[:, None] * stride_w + c[None, :], mask=tile, other=0.0)
    if NM_M == 0:
        p = tl.load(P + r[:, None] * stride_p + c[None, :], mask=tile, other=0) != 0
    else:
        p = tl.zeros((BR, BC), dtype=tl.int32) != 0
        invd2 = tl.load(INVD2 + c, mask=cmask, other=0.0)
    e = tl.zeros((BR, BC), dtype=tl.float32)
    for i in range(0, count):
        if NM_M != 0:
            if i % NM_M == 0:  # choose this group's mask from the current weights
                s = w * invd2[None, :] * w
                rank = tl.zeros((BR, BC), dtype=tl.int32)
                for j in tl.static_range(NM_M):
                    sj = tl.sum(tl.where(c[None, :] == i + j, s, 0.0), axis=1)
                    below = (sj[:, None] < s) | ((sj[:, None] == s) & (i + j < c[None, :]))
                    rank += below.to(tl.int32)
                group = (c >= i) & (c < i + NM_M)
                p = tl.where(group[None, :], rank < NM_N, p)
        hit = (c[None, :] == i) & p
        err = tl.sum(tl.where(hit, w, 0.0), axis=1) / tl.load(D + i)
        urow = tl.load(U + i * stride_u + c, mask=(c >= i) & cmask, other=0.0)
        w = w - err[:, None] * urow[None, :]
        w = tl.where(hit, 0.0, w)  # exact zeros where pruned
        e = tl.where(c[None, :] == i, err[:, None], e)
    tl.store(W + r[:, None] * stride_w + c[None, :], w, mask=tile)
    tl.store(E + r[:, None] * stride_e + c[None, :], e, mask=tile)
    if NM_M != 0:
        tl.store(P + r[:, None] * stride_p + c[None, :], p.to(tl.int8), mask=tile)


def obs_block_(w1: torch.Tensor, u1: torch.Tensor, d1: torch.Tensor,
               prune: torch.Tensor | None = None, inv_d2: torch.Tensor | None = None,
               nm: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one block's column loop; ``w1`` [rows, B] fp32 (a view of the weight, last
    stride 1) is updated in place. ``u1`` [B, B] is the block of the upper Cholesky factor,
    ``d1`` its diagonal. Unstructured: ``prune`` [rows, B] bool is the block's mask. N:M:
    ``nm`` and ``inv_d2`` [B] (1/U_ii^2, 0 for dead columns) choose it group by group.
    Returns ``(errors [rows, B] fp32, mask [rows, B] bool)``."""
    rows, count = w1.shape
    if w1.dtype != torch.float32 or w1.stride(1) != 1 or u1.stride(1) != 1:
        raise ValueError("obs_block_ needs fp32 tensors with unit last stride")
    if (prune is None) == (nm is None):
        raise ValueError("give either an unstructured mask or an N:M pattern")
    if nm is not None and count % nm[1]:
        raise ValueError(f"a block of {count} columns is not a whole number of {nm[1]}-groups")
    err = torch.empty((rows, count), device=w1.device, dtype=torch.float32)
    if prune is None:
        p = torch.zeros((rows, count), device=w1.device, dtype=torch.int8)
        n, m = nm
        invd2 = inv_d2.contiguous()
    else:
        p = prune.to(torch.int8).contiguous()
        n, m = 0, 0
        invd2 = d1  # unused
    bc = triton.next_power_of_2(count)
    br = max(1, min(16, 2048 // bc))
    d = d1.contiguous()
    obs_block_kernel[(triton.cdiv(rows, br),)](
        w1, w1.stride(0), p, p.stride(0), err, err.stride(0), u1, u1.stride(0), d, invd2,
        rows, count, NM_N=n, NM_M=m, BR=br, BC=bc, num_warps=4)
    return err, p.bool()

"""Activation-sparse product for small M (decode): ``y = mask(x) @ W.T (+ bias)``, skipping the
weight rows of ``W.T`` (the columns of W) whose input is zeroed for every row of x.

Layout: the weight is passed as ``wt`` [K, N] = W.T with any strides. ``W.T.contiguous()``
(TEAL's layout: the N weights of one input channel are contiguous) lets a masked-out channel
skip a whole contiguous row of memory. ``W.t()``, the transposed *view* of the stored [N, K]
weight (strides (1, K)), needs no copy, but there a channel's weights are a strided column,
so skipping it saves memory traffic only where a run of neighbouring channels is zeroed.

Mask, computed in registers with the runtime's rule (`sparsekit.kernels.act_sparse`):
``keep[m, k] = float32(|x[m, k]|) * scale[k] > threshold[k]`` (scale 1 without one; threshold
scalar or per channel). For M > 1 a channel's weight row is read when any row keeps it (the
union of the masks), and each row uses its own mask in the product.

Grid: (N tiles, K splits). Each program accumulates its K slice in fp32 and writes a partial
[M, BN] to a scratch buffer; the partials are summed over K splits in a fixed order afterwards
(deterministic; no atomics, so fp16 and bf16 need nothing special), then the bias is added and
the result is cast to x's dtype. TEAL's kernel instead adds fp16 partials atomically (fp16 only,
batch 1, non-deterministic order).

No speed is claimed here: it is checked for correctness against `sparsekit.kernels.act_sparse.act_sparse_mm_reference`
(also under ``TRITON_INTERPRET=1`` on CPU tensors; the interpreter's bf16 arithmetic is not
trusted, so CPU tests use fp32/fp16 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsekit.kernels.act_sparse import MAX_M

__all__ = ["MAX_M", "act_sparse_mm"]


@triton.jit
def act_sparse_kernel(X, WT, T, S, P, M, N, K, stride_xm, stride_wk, stride_wn,
                       PER_CHANNEL: tl.constexpr, HAS_SCALE: tl.constexpr,
                       BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BM)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_n = pid_n * BN + tl.arange(0, BN)
    in_m = offs_m < M
    in_k = offs_k < K
    in_n = offs_n < N
    x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=in_m[:, None] & in_k[None, :],
                other=0.0).to(tl.float32)
    imp = tl.abs(x)
    if HAS_SCALE:
        sc = tl.load(S + offs_k, mask=in_k, other=0.0)
        imp = imp * sc[None, :]
    if PER_CHANNEL:
        thr = tl.load(T + offs_k, mask=in_k, other=float("inf"))
        keep = imp > thr[None, :]
    else:
        thr0 = tl.load(T)
        keep = imp > thr0
    keep = keep & in_m[:, None] & in_k[None, :]
    xm = tl.where(keep, x, 0.0)
    row_active = tl.max(keep.to(tl.int32), axis=0) > 0                       # [BK]
    w = tl.load(WT + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                mask=row_active[:, None] & in_n[None, :], other=0.0).to(tl.float32)   # [BK, BN]
    acc = tl.sum(xm[:, :, None] * w[None, :, :], axis=1)                      # [BM, BN]
    base = P + pid_k * M * N
    tl.store(base + offs_m[:, None] * N + offs_n[None, :], acc, mask=in_m[:, None] & in_n[None, :])


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def act_sparse_mm(x: torch.Tensor, wt: torch.Tensor, threshold: torch.Tensor, scale: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, *, bk: int = 64, bn: int = 128, num_warps: int = 4) -> torch.Tensor:
    """``y[..., N]`` for ``x[..., K]`` with at most `MAX_M` rows; ``wt`` the transposed weight
    [K, N], any strides (``W.T.contiguous()``, or the view ``W.t()``: no copy is made);
    ``threshold`` float32 scalar or [K]; ``scale`` float32 [K] or None."""
    k, n = wt.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the weight expects {k}")
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"act_sparse_mm handles 1..{MAX_M} rows, got {m}: use the dense path")
    if wt.device != x.device:
        raise ValueError(f"x is on {x.device}, the weight on {wt.device}")
    x2 = x2.contiguous()
    thr = torch.as_tensor(threshold, dtype=torch.float32, device=x.device).contiguous()
    per_channel = thr.dim() == 1
    if per_channel and thr.numel() != k:
        raise ValueError(f"threshold must be a scalar or [{k}]")
    sc = None if scale is None else scale.to(device=x.device, dtype=torch.float32).reshape(-1).contiguous()
    if sc is not None and sc.numel() != k:
        raise ValueError(f"scale must have {k} entries, got {sc.numel()}")
    splits = triton.cdiv(k, bk)
    partial = torch.empty(splits, m, n, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(n, bn), splits)
    act_sparse_kernel[grid](x2, wt, thr, sc if sc is not None else thr, partial, m, n, k,
                             x2.stride(0), wt.stride(0), wt.stride(1),
                             PER_CHANNEL=per_channel, HAS_SCALE=sc is not None,
                             BM=max(_pow2(m), 1), BK=bk, BN=bn, num_warps=num_warps)
    y = partial.sum(0)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)

"""Activation-sparse products: the plain-torch references every activation-sparse kernel (and the
runtime's masked dense path) is tested against.

Rule, per token (one row of the last dimension)::

    keep[i] = float32(|x[i]|) * float32(scale[i]) > float32(threshold[i])   (scale 1 when None;
                                                                              threshold scalar or [C])
    x[i]    <- x[i] if keep[i] else 0

`MAX_M` (here, so that code choosing a path need not import triton) is the most rows the
Triton product (`sparsekit.kernels.act_sparse_triton`) takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MAX_M", "act_sparse_mm_reference", "act_sparse_reference", "masked_linear_reference"]

MAX_M = 16   # rows (tokens) the Triton activation-sparse product handles per call


def act_sparse_reference(x: torch.Tensor, threshold, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch definition of the mask, token by token: keep x[t, i] iff
    ``float32(|x[t, i]|) * float32(scale[i]) > float32(threshold[i])`` (scale 1 when None)."""
    flat = x.reshape(-1, x.shape[-1])
    thr = torch.as_tensor(threshold, dtype=torch.float32).expand(x.shape[-1])
    sc = None if scale is None else torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    rows = []
    for token in flat:
        imp = token.to(torch.float32).abs()
        if sc is not None:
            imp = imp * sc.to(imp.device)
        rows.append(torch.where(imp > thr.to(imp.device), token, torch.zeros_like(token)))
    return torch.stack(rows).reshape(x.shape) if rows else x.clone()


def masked_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            threshold, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` of the masked input (`act_sparse_reference`)."""
    return F.linear(act_sparse_reference(x, threshold, scale), weight, bias)


def act_sparse_mm_reference(x: torch.Tensor, wt: torch.Tensor, threshold, scale: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain torch: mask x with the runtime rule, multiply by ``wt`` ([K, N]) in fp32, add bias,
    cast to x's dtype."""
    masked = act_sparse_reference(x, threshold, scale).to(torch.float32)
    y = masked @ wt.to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)

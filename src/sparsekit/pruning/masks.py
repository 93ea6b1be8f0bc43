"""Pruning masks: magnitude, per-row, N:M and Wanda.

Every mask is a bool tensor with the weight's shape where **True means pruned**
(the weight is set to zero). All selections prune an *exact* count and are
deterministic: scores are ranked with a stable ascending order, so among equal
scores the lower column index (or, for per-matrix selection, the lower
row-major flat index) is pruned first. Scores must be finite.

Counts are ``floor(n * sparsity)`` computed exactly on the decimal value of
`sparsity` (so ``100 * 0.29`` gives 29, not 28 as plain float arithmetic would).
Work is done in fp32 on the input's device, in row chunks, so big layers
(e.g. 14336 x 4096) need only a few small temporaries beyond one fp32 score matrix.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import torch

__all__ = [
    "CHUNK_ELEMS",
    "prune_lowest",
    "parse_pattern",
    "num_pruned",
    "magnitude_mask",
    "row_mask",
    "nm_mask",
    "wanda_scores",
    "wanda_mask",
    "apply_mask_",
]

CHUNK_ELEMS = 1 << 22  # rows are processed in chunks of about this many scores
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """Parse a sparsity pattern: "unstructured" -> None; "N:M" -> (N, M).

    N is the number PRUNED in every group of M consecutive input columns
    ("2:4" keeps 2 of 4). Requires 0 < N < M; raises ValueError otherwise.
    """
    text = str(pattern).strip()
    if text.lower() == "unstructured":
        return None
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(
            f"invalid sparsity pattern {pattern!r}: use 'unstructured' or 'N:M' such as '2:4' or '4:8'"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(
            f"invalid sparsity pattern {pattern!r}: N:M needs 0 < N < M (N pruned out of every M)"
        )
    return n, m


def num_pruned(n: int, sparsity: float) -> int:
    """Exact ``floor(n * sparsity)`` for 0 <= sparsity <= 1 (ValueError otherwise)."""
    p = float(sparsity)
    if not (0.0 <= p <= 1.0):  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    return math.floor(n * Fraction(repr(p)))


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask pruning exactly the `k` lowest entries of each row of a 2-D tensor.

    Ties: the lower column index is pruned first (stable order). Short rows
    (N:M groups) use a stable sort; long rows a k-th value selection plus tie
    ranking (same result, about 2x faster). Rows are processed in chunks.
    """
    rows, cols = scores.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if k <= 0 or rows == 0:
        return mask
    if k >= cols:
        return mask.fill_(True)
    step = max(1, CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        chunk = scores[r0 : r0 + step]
        # short rows (N:M groups), and one long row on CUDA, where k-th value selection runs
        # one thread block per row (a per-matrix magnitude mask or a SparseGPT block)
        if cols <= 16 or (chunk.is_cuda and chunk.shape[0] == 1):
            idx = torch.sort(chunk, dim=1, stable=True).indices[:, :k]
            mask[r0 : r0 + step].scatter_(1, idx, True)
        else:
            mask[r0 : r0 + step] = _prune_lowest_select(chunk, k)
    return mask


def _prune_lowest_select(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Same contract as `prune_lowest` via k-th value selection plus tie ranking."""
    thresh = scores.kthvalue(k, dim=1, keepdim=True).values
    below = scores < thresh
    tie = scores == thresh
    need = k - below.sum(dim=1, keepdim=True)
    rank = tie.to(torch.int32).cumsum(dim=1, dtype=torch.int32)
    return below.logical_or_(tie.logical_and_(rank <= need))


def _as_2d_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.dim() != 2:
        raise ValueError(f"{name} expects a 2-D [out_features, in_features] tensor, got shape {tuple(scores.shape)}")
    return scores.float() if scores.dtype != torch.float32 else scores


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune exactly ``floor(in_features * sparsity)`` lowest scores in every row.

    Ties: lower column index pruned first (stable sort).
    """
    s = _as_2d_scores(scores, "row_mask")
    return prune_lowest(s, num_pruned(s.shape[1], sparsity))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: in each row, every group of `m` consecutive columns loses its `n` lowest.

    Groups start at column 0. Ties: lower column index pruned first.
    Raises ValueError if ``in_features % m != 0`` or not ``0 < n < m``.
    """
    s = _as_2d_scores(scores, "nm_mask")
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    rows, cols = s.shape
    if cols % m != 0:
        raise ValueError(
            f"{n}:{m} sparsity needs in_features divisible by {m}, but this layer has "
            f"in_features={cols} (out_features={rows}); {cols} % {m} = {cols % m}"
        )
    return prune_lowest(s.reshape(-1, m), n).reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Magnitude pruning by |W|.

    per_row=False: prune exactly ``floor(numel * sparsity)`` weights of the whole
    matrix, ties broken by lower row-major index. (The Wanda/SparseGPT reference
    prunes every |W| <= t with t the value at index floor(numel*p); that prunes
    at least one more weight and more on ties. We implement the exact count so
    the achieved sparsity equals the target.)
    per_row=True: exactly ``floor(in_features * sparsity)`` per row (see `row_mask`).
    """
    w = weight.detach()
    if w.dim() != 2:
        raise ValueError(f"magnitude_mask expects a 2-D weight, got shape {tuple(w.shape)}")
    scores = w.abs().float() if w.dtype != torch.float32 else w.abs()
    if per_row:
        return row_mask(scores, sparsity)
    k = num_pruned(scores.numel(), sparsity)
    return prune_lowest(scores.reshape(1, -1), k).reshape(w.shape)


def wanda_scores(weight: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda scores ``S_ij = |W_ij| * sqrt(sq_norm_j)`` in fp32, shape of `weight`."""
    w = weight.detach()
    if w.dim() != 2 or sq_norm.dim() != 1 or sq_norm.shape[0] != w.shape[1]:
        raise ValueError(
            f"wanda_scores: weight {tuple(w.shape)} needs sq_norm of shape [{w.shape[-1]}], "
            f"got {tuple(sq_norm.shape)}"
        )
    col = sq_norm.detach().to(device=w.device, dtype=torch.float32).clamp_min(0.0).sqrt_()
    scores = w.abs().float() if w.dtype != torch.float32 else w.abs()
    return scores.mul_(col)


def wanda_mask(
    weight: torch.Tensor,
    sq_norm: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Wanda mask: per output row (unstructured) or per N:M group, prune lowest scores.

    With `nm` given, `sparsity` is not used (the pattern fixes it to N/M).
    Ties: lower column index pruned first.
    """
    scores = wanda_scores(weight, sq_norm)
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity)


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the masked entries of `weight` in place (exact +0.0)."""
    if mask.dtype != torch.bool or mask.shape != weight.shape:
        raise ValueError(
            f"apply_mask_ needs a bool mask of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )
    with torch.no_grad():
        weight.masked_fill_(mask.to(weight.device), 0.0)

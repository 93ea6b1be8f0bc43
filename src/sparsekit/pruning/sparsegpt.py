"""SparseGPT: Hessian-based mask selection with OBS weight updates (pure tensor code).

Follows the reference algorithm (IST-DASLab/sparsegpt) for one linear layer:

1. Damp the Hessian: dead columns (H_jj == 0) get H_jj = 1, then
   ``lambda = percdamp * mean(diag H)`` is added to the diagonal.
2. The upper Cholesky factor U of H^-1 (H^-1 = U^T U), computed with one
   Cholesky and one triangular solve (see `inverse_hessian_factor`). On
   failure (info != 0 or non-finite) percdamp is multiplied by 10 and we
   retry; after `max_retries` a diagonal inverse (Wanda-like scores) or, if
   even the diagonal is unusable, the identity (magnitude scores) is used, and
   the OBS updates become zero. Never raises for numerical reasons.
3. Blocks of `blocksize` columns: choose the block's mask from the *current*
   (already updated) weights with score ``W_rj^2 / U_jj^2``; then, column by
   column, prune and spread the error over the block's later columns
   (``w_k -= e_j U_jk``, ``e_j = (w_j - q_j) / U_jj``); finally apply the block's
   errors to all later columns in one matmul (lazy batch update).

Mask selection differs from the reference in two documented ways:

* Unstructured: each block prunes exactly ``floor(out_features * B * p)``
  entries of the flattened block (B = columns in the block), stable order,
  ties pruned at the lower row-major index first. (The reference prunes every
  score <= the value at that index, i.e. at least one more, more on ties.)
* Dead columns are not zeroed wholesale; their scores are forced to 0 (pruning
  them costs nothing on the calibration data), so they are pruned first and the
  mask keeps its exact count / exact N:M pattern. Weights of dead columns left
  unpruned are unchanged.

N:M: at the first column of each group of M, the group's N lowest scores per
row (current weights) are pruned, ties to the lower column. `blocksize` must be
a multiple of M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.calibration.stats import ieee_fp32_matmul
from sparsekit.pruning.masks import prune_lowest, num_pruned

__all__ = ["SparseGPTResult", "sparsegpt_prune", "inverse_hessian_factor"]


@dataclass
class SparseGPTResult:
    """Outcome of `sparsegpt_prune`."""

    weight: torch.Tensor  # updated weight, same dtype/device as the input weight
    mask: torch.Tensor  # bool, True = pruned
    loss: float  # OBS estimate: sum over rows of (W - W') H_damped (W - W')^T / 2
    damp_used: float  # the percdamp finally used
    retries: int  # how many times percdamp was raised (x10)
    fallback: str | None = None  # None, "diagonal" or "identity" if every Cholesky failed
    dead_columns: int = 0  # input channels with H_jj == 0


def inverse_hessian_factor(
    hessian: torch.Tensor, percdamp: float = 0.01, max_retries: int = 3
) -> tuple[torch.Tensor, float, int, str | None, torch.Tensor]:
    """Upper Cholesky factor U of the damped inverse Hessian (H^-1 = U^T U), fp32.

    Dead columns (H_jj == 0) get H_jj = 1, then percdamp * mean(diag H) is added
    to the diagonal. `hessian` (fp32) is not modified. Returns
    ``(U, percdamp_used, retries, fallback, dead)``; `dead` is a bool vector.

    U is computed as ``flip(inv(cholesky(flip(H))))`` (flip = reverse rows and
    columns): with J the reversal, J H J = L L^T gives H^-1 = (J L^-1 J)^T (J L^-1 J)
    and J L^-1 J is upper triangular with a positive diagonal, so by uniqueness it
    is the same U the reference gets from cholesky -> cholesky_inverse ->
    cholesky(upper), with one factorization and one triangular solve (faster,
    slightly more accurate, and no second Cholesky that could fail).
    """
    n = hessian.shape[0]
    base = hessian.flip(0, 1)  # a private copy
    diag = base.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    mean_diag = diag.mean()
    damp = float(percdamp)
    for attempt in range(max_retries + 1):
        u = _try_factor(base, damp * mean_diag)
        if u is not None:
            return u, damp, attempt, None, dead.flip(0)
        if attempt < max_retries:
            damp *= 10.0
    # Every attempt failed: diagonal inverse if usable, else identity.
    d = (diag + damp * mean_diag).flip(0)
    dead = dead.flip(0)
    if bool(torch.isfinite(d).all()) and bool((d > 0).all()):
        return torch.diag(d.rsqrt()), damp, max_retries, "diagonal", dead
    return torch.eye(n, dtype=hessian.dtype, device=hessian.device), damp, max_retries, "identity", dead


def _try_factor(flipped: torch.Tensor, damp: torch.Tensor) -> torch.Tensor | None:
    """U for ``flip(flipped) + damp * I``, or None if it is not positive definite."""
    try:
        h = flipped.clone()
        h.diagonal().add_(damp)
        lower, info = torch.linalg.cholesky_ex(h)
        del h
        if int(info) != 0 or not bool(torch.isfinite(lower).all()):
            return None
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False)
        del lower, eye
        if not bool(torch.isfinite(inv_lower).all()):
            return None
        return inv_lower.flip(0, 1)
    except RuntimeError:  # e.g. a backend without a kernel for this input
        return None


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    max_retries: int = 3,
    backend: str = "auto",
    mask: torch.Tensor | None = None,
) -> SparseGPTResult:
    """Prune one linear layer with SparseGPT; the inputs are not modified.

    Args:
        weight: [out_features, in_features], any float dtype, any device.
        hessian: [in_features, in_features] (e.g. `InputStats.hessian`).
        sparsity: target fraction pruned (unstructured; ignored when `nm` is set).
        nm: (N, M) to prune N of every M consecutive input columns.
        blocksize: columns per block (a multiple of M for N:M).
        percdamp: relative dampening; raised x10 up to `max_retries` times on failure.
        backend: how each block's column loop runs: "torch" (a loop of small ops, the
            reference), "triton" (one kernel launch per block, `kernels/obs_triton.py`) or
            "auto" (Triton on CUDA, torch elsewhere).
        mask: a fixed mask (bool [out, in], True = pruned) instead of SparseGPT's own selection:
            only the OBS updates run, compensating for exactly these pruned weights (used after a
            refiner such as DSnoT changed the mask). `sparsity` and `nm` are then not used.
    """
    if weight.dim() != 2:
        raise ValueError(f"sparsegpt_prune expects a 2-D weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}] for weight {tuple(weight.shape)}, got {tuple(hessian.shape)}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if nm is not None:
        n, m = nm
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
        if cols % m != 0:
            raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got in_features={cols}")
        if blocksize % m != 0:
            raise ValueError(f"blocksize {blocksize} must be a multiple of M={m} for {n}:{m} sparsity")
    else:
        num_pruned(1, sparsity)  # validates the range
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (rows, cols)):
        raise ValueError(f"mask must be a bool tensor of shape {(rows, cols)}, got {mask.dtype} {tuple(mask.shape)}")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    if backend == "auto":
        backend = "triton" if weight.is_cuda and _triton_available() else "torch"

    device = weight.device
    with torch.no_grad(), ieee_fp32_matmul(device):
        w = weight.detach().to(dtype=torch.float32).clone()
        h = hessian.detach().to(device=device, dtype=torch.float32)
        u, damp, retries, fallback, dead = inverse_hessian_factor(h, percdamp, max_retries)
        if backend == "triton":
            u = u.contiguous()  # the factor may come back column-major from the solver
        fixed = None if mask is None else mask.to(device)
        mask, losses = _blocked_obs(w, u, dead, sparsity, nm, blocksize, backend == "triton", fixed)
        del u
    return SparseGPTResult(
        weight=w.to(dtype=weight.dtype),
        mask=mask,
        loss=float(losses.sum()) / 2.0,
        damp_used=damp,
        retries=retries,
        fallback=fallback,
        dead_columns=int(dead.sum()),
    )


def _blocked_obs(
    w: torch.Tensor,
    u: torch.Tensor,
    dead: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
    use_triton: bool = False,
    fixed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SparseGPT block loop; updates `w` (fp32) in place, returns (mask, per-row loss).

    Inside a block the torch loop works on the transposed block ([columns, rows],
    contiguous), so each column is a contiguous row and every per-column update
    is one BLAS rank-1 `addmm_`. With `use_triton` the column loop is one kernel launch.
    With `fixed` (a whole-matrix mask) no selection happens: each block prunes what it says.
    """
    rows, cols = w.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    losses = torch.zeros(rows, dtype=torch.float32, device=w.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        if use_triton:
            block_fixed = None if fixed is None else fixed[:, i1:i2]
            err1 = _obs_block_triton(w, u, dead, sparsity, nm, i1, i2, mask, block_fixed)
            losses.add_(err1.square().sum(dim=1))
            if i2 < cols:
                w[:, i2:].addmm_(err1, u[i1:i2, i2:], alpha=-1.0)
            continue
        w1 = w[:, i1:i2].T.contiguous()  # [count, rows]
        u1 = u[i1:i2, i1:i2]
        d1 = u1.diagonal()
        inv_d2 = d1.square().reciprocal() * (~dead[i1:i2]).to(torch.float32)  # dead: score 0
        err1 = torch.zeros(count, rows, dtype=torch.float32, device=w.device)
        if fixed is not None:
            mask1 = fixed[:, i1:i2].T.contiguous()
        elif nm is None:
            scores = w1.square() * inv_d2[:, None]
            k = num_pruned(rows * count, sparsity)
            mask1 = prune_lowest(scores.T.reshape(1, -1), k).reshape(rows, count).T.contiguous()
        else:
            mask1 = torch.zeros(count, rows, dtype=torch.bool, device=w.device)
        for i in range(count):
            if fixed is None and nm is not None and i % nm[1] == 0:
                g = slice(i, i + nm[1])
                scores = (w1[g] * inv_d2[g, None] * w1[g]).T  # [rows, M]
                mask1[g] = prune_lowest(scores, nm[0]).T
            col = w1[i]
            q = col.masked_fill(mask1[i], 0.0)
            torch.div(col - q, d1[i], out=err1[i])
            w1[i:].addmm_(u1[i, i:, None], err1[i, None], alpha=-1.0)
            w1[i] = q  # exact zeros for pruned entries
        losses.add_(err1.square().sum(dim=0))
        w[:, i1:i2] = w1.T
        mask[:, i1:i2] = mask1.T
        if i2 < cols:
            w[:, i2:].addmm_(err1.T, u[i1:i2, i2:], alpha=-1.0)
    return mask, losses


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _obs_block_triton(w: torch.Tensor, u: torch.Tensor, dead: torch.Tensor, sparsity: float,
                      nm: tuple[int, int] | None, i1: int, i2: int, mask: torch.Tensor,
                      fixed: torch.Tensor | None = None) -> torch.Tensor:
    """One block [i1, i2) with the Triton column loop; same masks and updates as the torch
    loop above. Writes the block's mask into `mask`, returns the errors [rows, count]."""
    from sparsekit.kernels.obs_triton import obs_block_

    rows = w.shape[0]
    w1 = w[:, i1:i2]  # a view: updated in place
    u1 = u[i1:i2, i1:i2]
    d1 = u1.diagonal()
    inv_d2 = d1.square().reciprocal() * (~dead[i1:i2]).to(torch.float32)
    if fixed is not None:
        err1, block_mask = obs_block_(w1, u1, d1, prune=fixed)
    elif nm is None:
        scores = w1.square() * inv_d2[None, :]
        k = num_pruned(rows * (i2 - i1), sparsity)
        prune = prune_lowest(scores.reshape(1, -1), k).view(rows, i2 - i1)
        err1, block_mask = obs_block_(w1, u1, d1, prune=prune)
    else:
        err1, block_mask = obs_block_(w1, u1, d1, inv_d2=inv_d2, nm=nm)
    mask[:, i1:i2] = block_mask
    return err1

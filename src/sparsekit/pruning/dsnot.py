"""DSnoT: training-free refinement of a pruning mask by swaps within each output row.

Pure tensor code for one linear layer ``y = W x`` (W: [out, in]). Masks are bool, True = pruned.

Quantities (mu_j = E[x_j] and v_j = Var[x_j] are the per-channel token mean and population
variance, `InputStats.mean` / `.var`; s_j = `InputStats.sq_norm`):

* Contribution ``D_ij = W_ij * mu_j``: what weight (i, j) adds to the expected output y_i.
* Expected error of row i (expected dense-minus-sparse output, in output units per token)::

      e_i = sum_j R_ij mu_j - sum_{j kept} W_ij mu_j

  with R the reference (dense) weight; when R = W (the default) this is
  ``e_i = sum_{j pruned} D_ij``.
* Row scale (the RMS of y_i if input channels were uncorrelated)::

      scale_i = sqrt( sum_j R_ij^2 (mu_j^2 + v_j) )

  It equals ||Wanda scores of row i||_2 / sqrt(T) for sequences of T tokens, so it is free of
  the sequence length and of the weight / activation scale. A row is finished once
  ``|e_i| <= threshold * scale_i``. Default threshold 0.01: an expected output bias of 1% of
  the row's output RMS is negligible next to the variance part of the pruning error, which
  DSnoT does not reduce. (The reference code uses an absolute 0.1 on a quantity scaled by the
  sequence length T = 2048, i.e. about 5e-5 in token units, which does not transfer across
  models.)
* Regrow priority ``G_ij = D_ij / vn_j^gamma`` with ``vn_j = max(v_j / mean_k v_k, 1e-6)``
  (variance relative to the layer mean, floored, so a zero-variance channel gives a large
  finite key and never inf/NaN; all-zero variances give vn = 1). gamma = `var_power`.
* Prune priority: the Wanda score ``|W_ij| sqrt(s_j)``, lowest first.

Algorithm (all rows advance together, one candidate swap per row per cycle):

1. With sign sigma = sign(e_i), the regrow candidate r is the next initially pruned entry with
   ``sign(D_ir) = sigma`` in order of decreasing |G| (so growing it moves e_i towards 0); the
   prune candidate q is the kept entry with ``sign(D_iq) = -sigma`` and the lowest Wanda score
   (pruning it also moves e_i towards 0). Unstructured: the next initially kept entry of that
   sign in order of increasing Wanda score. N:M: the lowest-scored kept entry of that sign in
   r's group of M columns that has not been swapped yet, so every group keeps its count of
   pruned entries. Entries with D = 0 (a dead channel, mu_j = 0, or W_ij = 0) are never
   candidates: they cannot change e_i.
2. ``e' = e_i - D_ir + D_iq``. The swap is accepted only if ``|e'| < |e_i|`` and, with
   `variance_guard` (default), if it also lowers the estimated squared output error of the row
   ``e_i^2 + sum_j (R_ij - W_ij keep_ij)^2 v_j`` (bias^2 plus the variance part, with input
   channels treated as uncorrelated). The guard is this library's addition: plain DSnoT
   trades bias for variance blindly, which makes the output error *larger* when the input
   means are small next to their spread (synthetic layers: up to +7% output MSE without
   the guard; with it, none of those cases got worse). On acceptance r is regrown, q pruned and ``e_i = e'``. A
   rejected swap (or, under N:M, a group without a prune candidate) skips r for good; the row
   stays active and tries its next regrow candidate in the next cycle. (The reference freezes
   a row at its first rejection and accepts swaps that increase |e_i|.)
3. A row stops when ``|e_i| <= threshold * scale_i``, when it has no regrow or no prune
   candidate of the needed sign left, or after `max_cycles` cycles. Hence every row keeps its
   exact count of pruned entries (one in, one out), |e_i| never grows, and each entry changes
   state at most once (a regrown entry is never pruned again and vice versa).

Ties: candidates with equal keys are taken in increasing column order. Each row needs at most
`max_cycles` candidates from each list, so only those are selected (no full sort): the cost is
a few passes over [out, in] plus ``max_cycles`` tiny steps on [out]-sized tensors. Everything
is computed in fp32 (the running error e_i in fp64, except on Apple MPS) on the weight's
device, with CUDA matmuls in full fp32 (no TF32); `weight` may be any float dtype and is never
modified.

How DSnoT interacts with SparseGPT
----------------------------------
DSnoT only moves mask entries; it never changes values. After SparseGPT the weights to refine
are the OBS-updated weights W' and the layer should still match the dense weights W, so call
``dsnot_refine(W'_unmasked, mask, ..., reference_weight=W)`` and keep
``W'_unmasked * ~refined_mask``. Then:

* The expected error is measured against the dense layer: ``e_i = sum_j W_ij mu_j -
  sum_{kept} W'_ij mu_j`` includes the mean shift the OBS update put on the kept weights.
  SparseGPT's Hessian ``2/N X X^T`` is uncentred, so the update already cancels most of the
  mean error: expect few swaps and a small gain (the DSnoT paper's SparseGPT gains are small,
  and its released code cannot produce them).
* A regrown entry r gets a value back, ``W'_unmasked[i, r]``: it must be a real value
  (SparseGPT's result has exact zeros at pruned entries; with zeros there D_ir = 0 and nothing
  is ever regrown). Natural choices are the value the column had when OBS pruned it, or the
  dense value W_ir. The OBS compensation already spread onto later columns for pruning r
  stays in place, so regrowing r adds ``W'_ir x_r`` on top of it. The expected part of this is
  exactly what e_i accounts for and `variance_guard` counts its diagonal variance, but the
  input correlations the OBS update exploited are not modelled, so a swap can undo part of
  SparseGPT's second-order optimality. Newly pruned entries q lose ``W'_iq`` uncompensated.
* Re-running the OBS update for the refined mask (SparseGPT with a fixed mask) is the other
  option; refine with the updated weights and ``reference_weight=W`` first, not with the dense
  weights alone: without the reference, DSnoT "corrects" a mean error the update has already
  removed. Measured on synthetic 64 x 256 layers with non-zero-mean, uncorrelated inputs at
  50% (output MSE relative to plain SparseGPT): dense-only refinement then OBS 1.01-1.11
  (worse); updated weights (dense values at pruned entries) with the reference, kept as they
  are: 0.987-1.001; the same then
  OBS: 0.994-1.001; without `variance_guard`: up to 1.058.
* Under N:M the refined mask stays a valid N:M mask, so 2:4 export still applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsekit.calibration.stats import ieee_fp32_matmul
from sparsekit.pruning import masks
from sparsekit.pruning.masks import prune_lowest

__all__ = ["DSnoTResult", "dsnot_refine"]

_VAR_FLOOR = 1e-6  # relative to the mean variance of the layer


@dataclass
class DSnoTResult:
    """Outcome of `dsnot_refine`. Per-row tensors are on the weight's device."""

    mask: torch.Tensor  # bool [out, in], True = pruned; a new tensor
    swaps: torch.Tensor  # int64 [out]: accepted swaps per row
    error_before: torch.Tensor  # fp32 [out]: signed expected error e_i of the initial mask
    error_after: torch.Tensor  # fp32 [out]: signed expected error e_i of the refined mask
    scale: torch.Tensor  # fp32 [out]: scale_i, the row's output RMS estimate
    cycles: int  # cycles run (<= max_cycles)

    @property
    def num_swaps(self) -> int:
        return int(self.swaps.sum())


def _vec(t: torch.Tensor, n: int, name: str, device) -> torch.Tensor:
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"dsnot_refine: {name} must have shape [{n}], got {tuple(t.shape)}")
    t = t.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"dsnot_refine: {name} has non-finite entries")
    return t


def _acc_dtype(device: torch.device) -> torch.dtype:
    """fp64 for the running errors, except on backends without fp64 (Apple MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _chunks(rows: int, cols: int):
    step = max(1, masks.CHUNK_ELEMS // max(cols, 1))  # the same row chunks as the masks
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def _select_ordered(key: torch.Tensor, k: int, largest: bool, valid) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k smallest (or largest) keys: (column indices [rows, k] in increasing (or
    decreasing) key order, ties to the lower column; their keys [rows, k]).

    A k-selection plus two small sorts. Rows where the k-th and (k+1)-th keys tie on a
    candidate (``valid(key)``), so the selection may have kept a higher column, are redone with
    the exact stable selection of `masks`.
    """
    rows, cols = key.shape
    kk = min(k + 1, cols)
    vals, idx = key.topk(kk, dim=1, largest=largest, sorted=False)
    idx, order = idx.sort(dim=1)
    vals, order = vals.gather(1, order).sort(dim=1, stable=True, descending=largest)
    idx = idx.gather(1, order)
    if kk > k:
        edge = vals[:, k - 1]
        tie = (edge == vals[:, k]) & valid(edge)
        if bool(tie.any()):
            bad = tie.nonzero().squeeze(1)
            sub = key[bad]
            bidx = prune_lowest(sub.neg() if largest else sub, k).nonzero()[:, 1].view(-1, k)
            bvals, order = sub.gather(1, bidx).sort(dim=1, stable=True, descending=largest)
            idx[bad, :k] = bidx.gather(1, order)
            vals[bad, :k] = bvals
    return idx[:, :k], vals[:, :k]


def _pick(t: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``t[i, j[i]]`` for a 2-D `t` and a 1-D index `j` (gather: much faster than indexing)."""
    return t.gather(1, j[:, None]).squeeze(1)


def dsnot_refine(
    weight: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    sq_norm: torch.Tensor,
    nm: tuple[int, int] | None = None,
    max_cycles: int = 50,
    threshold: float = 0.01,
    var_power: float = 1.0,
    reference_weight: torch.Tensor | None = None,
    variance_guard: bool = True,
) -> DSnoTResult:
    """Refine `mask` (True = pruned) for `weight` by DSnoT swaps; see the module docstring.

    Args:
        weight: [out, in], any float dtype and device (values of pruned entries must be the
            values they would have if regrown).
        mask: bool [out, in], the initial mask (e.g. from `wanda_mask`); not modified.
        mean, var, sq_norm: [in] input statistics (`InputStats.mean`, `.var`, `.sq_norm`).
        nm: (N, M) if `mask` is N:M: swaps then stay inside one group of M columns.
        max_cycles: at most this many swap attempts (and swaps) per row; 0 returns the mask.
        threshold: a row stops once ``|e_i| <= threshold * scale_i`` (0 = as far as possible).
        var_power: gamma in the regrow priority ``D / var^gamma``.
        reference_weight: the dense weights the layer should match (default `weight`).
        variance_guard: also require that the swap lowers the estimated squared error
            ``e_i^2 + sum_j (R_ij - W_ij keep_ij)^2 v_j`` (see the module docstring); False
            gives the plain DSnoT acceptance (|e_i| decreases).
    """
    if weight.dim() != 2:
        raise ValueError(f"dsnot_refine expects a 2-D weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    dev = weight.device
    if mask.dtype != torch.bool or tuple(mask.shape) != (rows, cols):
        raise ValueError(f"dsnot_refine needs a bool mask of shape {(rows, cols)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if reference_weight is not None and tuple(reference_weight.shape) != (rows, cols):
        raise ValueError(f"reference_weight must have shape {(rows, cols)}, got {tuple(reference_weight.shape)}")
    if int(max_cycles) < 0 or not threshold >= 0 or not var_power >= 0:
        raise ValueError("dsnot_refine needs max_cycles >= 0, threshold >= 0 and var_power >= 0")
    group = None
    if nm is not None:
        n, group = nm
        if not 0 < n < group or cols % group:
            raise ValueError(f"dsnot_refine: {n}:{group} needs 0 < N < M and in_features ({cols}) divisible by M")
    mu = _vec(mean, cols, "mean", dev)
    v = _vec(var, cols, "var", dev).clamp_min(0.0)
    root_sq = _vec(sq_norm, cols, "sq_norm", dev).clamp_min(0.0).sqrt_()
    has_ref = reference_weight is not None
    ref = reference_weight.detach().to(dev) if has_ref else weight

    with torch.no_grad(), ieee_fp32_matmul(dev):
        mask = mask.to(dev).clone()
        k = min(int(max_cycles), cols)
        acc = _acc_dtype(dev)
        vmean = float(v.mean())
        vn = (v / vmean).clamp_min_(_VAR_FLOOR) if vmean > 0 else torch.ones_like(v)
        grow_col = mu * vn.pow_(-float(var_power))  # G = W * grow_col (same sign as D = W * mu)
        second = mu.square() + v
        e = torch.empty(rows, dtype=acc, device=dev)
        scale = torch.empty(rows, dtype=torch.float32, device=dev)
        # Candidate lists [rows, 2 * k]: slots [0, k) for sign 0 (D > 0), [k, 2k) for sign 1
        # (D < 0); valid entries form a prefix of each half. With each entry: its contribution
        # D and its change of the variance estimate when swapped.
        grow_idx = torch.zeros(rows, 2 * k, dtype=torch.int64, device=dev)
        grow_ok = torch.zeros(rows, 2 * k, dtype=torch.bool, device=dev)
        grow_d, grow_dv = (torch.zeros(rows, 2 * k, dtype=torch.float32, device=dev) for _ in range(2))
        prune_idx, prune_ok = torch.zeros_like(grow_idx), torch.zeros_like(grow_ok)
        prune_d, prune_dv = torch.zeros_like(grow_d), torch.zeros_like(grow_dv)
        for r0, r1 in _chunks(rows, cols):
            w = weight[r0:r1].detach().float()
            pruned = mask[r0:r1]
            r_w = ref[r0:r1].float() if has_ref else w
            if has_ref:
                e[r0:r1] = (r_w @ mu).to(acc) - (torch.where(pruned, 0.0, w) @ mu).to(acc)
            else:
                e[r0:r1] = torch.where(pruned, w, 0.0) @ mu
            scale[r0:r1] = (r_w.square() @ second).sqrt_()
            if k == 0:
                continue
            g = torch.where(pruned, w * grow_col, 0.0)  # regrow keys; kept entries 0 (never valid)
            for s, largest in ((0, True), (1, False)):
                valid = (lambda t: t > 0) if largest else (lambda t: t < 0)
                idx, key = _select_ordered(g, k, largest, valid)
                sl = slice(s * k, (s + 1) * k)
                grow_idx[r0:r1, sl], grow_ok[r0:r1, sl] = idx, valid(key)
                grow_d[r0:r1, sl], grow_dv[r0:r1, sl] = _entry_terms(w, r_w, mu, v, idx, has_ref, grow=True)
            if group is None:
                wanda = torch.where(pruned, float("inf"), w.abs().mul_(root_sq))  # kept entries only
                d = w * mu
                for s, sel in ((0, d > 0), (1, d < 0)):
                    idx, key = _select_ordered(torch.where(sel, wanda, float("inf")), k, False, torch.isfinite)
                    sl = slice(s * k, (s + 1) * k)
                    prune_idx[r0:r1, sl], prune_ok[r0:r1, sl] = idx, torch.isfinite(key)
                    prune_d[r0:r1, sl], prune_dv[r0:r1, sl] = _entry_terms(w, r_w, mu, v, idx, has_ref, grow=False)
        e_before = e.float()
        swaps = torch.zeros(rows, dtype=torch.int64, device=dev)
        if k == 0 or rows == 0:
            return DSnoTResult(mask, swaps, e_before, e_before.clone(), scale, 0)
        grow_n = torch.stack([grow_ok[:, :k].sum(1), grow_ok[:, k:].sum(1)], 1)
        prune_n = torch.stack([prune_ok[:, :k].sum(1), prune_ok[:, k:].sum(1)], 1)
        del grow_ok, prune_ok

        thr = scale.to(acc) * float(threshold)
        gptr = torch.zeros(rows, 2, dtype=torch.int64, device=dev)
        pptr = torch.zeros(rows, 2, dtype=torch.int64, device=dev)
        moved = torch.zeros(rows, cols, dtype=torch.bool, device=dev) if group is not None else None
        offsets = torch.arange(group, device=dev) if group is not None else None
        cycles = 0
        for _ in range(k):
            gs = (e < 0).long()  # e > 0: grow from sign 0 (D > 0) and prune from sign 1 (D < 0)
            ps = 1 - gs
            gp = _pick(gptr, gs)
            active = (e.abs() > thr) & (gp < _pick(grow_n, gs))
            if group is None:
                pp = _pick(pptr, ps)
                active &= pp < _pick(prune_n, ps)
            if not bool(active.any()):
                break
            cycles += 1
            slot = gs * k + gp.clamp(max=k - 1)
            r = _pick(grow_idx, slot)
            d_r, dv_r = _pick(grow_d, slot), _pick(grow_dv, slot)
            if group is None:
                slot_q = ps * k + pp.clamp(max=k - 1)
                q = _pick(prune_idx, slot_q)
                d_q, dv_q = _pick(prune_d, slot_q), _pick(prune_dv, slot_q)
                attempt = active
            else:
                cols_g = (r - r % group)[:, None] + offsets  # r's group [rows, M]
                wg = weight.gather(1, cols_g).float()
                mu_g = mu[cols_g]
                dg = wg * mu_g
                opposite = torch.where((gs == 0)[:, None], dg < 0, dg > 0)
                cand = opposite & ~mask.gather(1, cols_g) & ~moved.gather(1, cols_g)
                j = torch.where(cand, wg.abs() * root_sq[cols_g], float("inf")).argmin(1)  # ties: lower column
                attempt = active & cand.any(1)
                q = _pick(cols_g, j)
                d_q = _pick(dg, j)
                w_q, v_q = _pick(wg, j), v[q]
                if has_ref:
                    ref_q = _pick(ref.gather(1, cols_g).float(), j)
                    dv_q = v_q * (ref_q.square() - (ref_q - w_q).square())
                else:
                    dv_q = w_q.square() * v_q
            e_new = e - d_r.to(acc) + d_q.to(acc)
            ok = attempt & (e_new.abs() < e.abs())
            if variance_guard:
                ok &= (e_new.square() - e.square() + dv_r.to(acc) + dv_q.to(acc)) < 0
            gptr.scatter_add_(1, gs[:, None], active.long()[:, None])  # accepted or not, r is used up
            if group is None:
                pptr.scatter_add_(1, ps[:, None], ok.long()[:, None])
            else:
                moved.scatter_(1, r[:, None], (ok | _pick(moved, r))[:, None])
                moved.scatter_(1, q[:, None], (ok | _pick(moved, q))[:, None])
            # Rows without a swap write back what they hold (their r, q may be placeholders).
            mask.scatter_(1, r[:, None], (~ok & _pick(mask, r))[:, None])
            mask.scatter_(1, q[:, None], (ok | _pick(mask, q))[:, None])
            e = torch.where(ok, e_new, e)
            swaps += ok.long()
        return DSnoTResult(mask, swaps, e_before, e.float(), scale, cycles)


def _entry_terms(w, r_w, mu, v, idx, has_ref: bool, grow: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For list entries `idx` [rows, k] of a row chunk: D = W mu, and the change of
    ``sum_j (R_j - W_j keep_j)^2 v_j`` when the entry is regrown (`grow`) or pruned."""
    wi = w.gather(1, idx)
    d = wi * mu[idx]
    vi = v[idx]
    if not has_ref:
        dv = wi.square() * vi
        return d, (dv.neg_() if grow else dv)
    ri = r_w.gather(1, idx)
    if grow:
        return d, vi * ((ri - wi).square() - ri.square())
    return d, vi * (ri.square() - (ri - wi).square())

"""DSnoT mask refinement: an independent per-row reference, hand-computed swaps and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from sparsekit.calibration.stats import InputStats
from sparsekit.pruning import masks as masks_mod
from sparsekit.pruning.dsnot import dsnot_refine
from sparsekit.pruning.masks import magnitude_mask, nm_mask, wanda_mask
from sparsekit.pruning.sparsegpt import sparsegpt_prune


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _layer(d_out=24, d_in=64, seed=0, mean_scale=1.0, nseq=6, seqlen=32):
    """Weights and InputStats of inputs with non-zero, channel-dependent means and spreads."""
    g = _gen(seed)
    std = torch.rand(d_in, generator=g) * 2 + 0.1
    x = torch.randn(nseq, seqlen, d_in, generator=g) * std + mean_scale * torch.randn(d_in, generator=g) * std
    stats = InputStats(d_in)
    stats.update(x)
    w = torch.randn(d_out, d_in, generator=g)
    return w, stats, x.reshape(-1, d_in)


def _stats_args(stats):
    return stats.mean, stats.var, stats.sq_norm


def _errors(w, mask, mean, ref=None):
    """Independent fp64 expected error per row: E[(R - W * keep) x] = sum_j (R_ij - W_ij keep_ij) mu_j."""
    ref = w if ref is None else ref
    keep = (~mask).double()
    return (ref.double() - w.double() * keep) @ mean.double()


def _ref_dsnot(w, mask, mean, var, sq_norm, nm=None, max_cycles=50, threshold=0.01, var_power=1.0,
               guard=True, ref=None):
    """Plain-Python fp64 DSnoT, one row at a time, following the documented rules."""
    w64 = w.double().tolist()
    r64 = (w if ref is None else ref).double().tolist()
    mu, v, sq = mean.double().tolist(), var.double().tolist(), sq_norm.double().tolist()
    cols = len(mu)
    vbar = sum(v) / cols
    vn = [max(x / vbar, 1e-6) if vbar > 0 else 1.0 for x in v]
    out = mask.clone()
    swaps = []
    for i, (wr, rr) in enumerate(zip(w64, r64)):
        pr = mask[i].tolist()
        d = [wr[j] * mu[j] for j in range(cols)]
        gk = [d[j] / vn[j] ** var_power for j in range(cols)]
        wanda = [abs(wr[j]) * math.sqrt(sq[j]) for j in range(cols)]
        e = sum(rr[j] * mu[j] for j in range(cols)) - sum(wr[j] * mu[j] for j in range(cols) if not pr[j])
        scale = math.sqrt(sum(rr[j] ** 2 * (mu[j] ** 2 + v[j]) for j in range(cols)))

        def sign(x):
            return (x > 0) - (x < 0)

        grow = {s: sorted((j for j in range(cols) if pr[j] and sign(d[j]) == s), key=lambda j: (-abs(gk[j]), j))
                for s in (1, -1)}
        prune = {s: sorted((j for j in range(cols) if not pr[j] and sign(d[j]) == s), key=lambda j: (wanda[j], j))
                 for s in (1, -1)}
        used, n = set(), 0
        for _ in range(max_cycles):
            if abs(e) <= threshold * scale:
                break
            s = 1 if e > 0 else -1
            if not grow[s] or (nm is None and not prune[-s]):
                break
            r = grow[s].pop(0)
            if nm is None:
                q = prune[-s][0]
            else:
                g0 = r - r % nm[1]
                cands = [j for j in range(g0, g0 + nm[1]) if not pr[j] and j not in used and sign(d[j]) == -s]
                if not cands:
                    continue
                q = min(cands, key=lambda j: (wanda[j], j))
            e_new = e - d[r] + d[q]
            ok = abs(e_new) < abs(e)
            if guard:
                dv = (v[q] * (rr[q] ** 2 - (rr[q] - wr[q]) ** 2)
                      + v[r] * ((rr[r] - wr[r]) ** 2 - rr[r] ** 2))
                ok = ok and e_new**2 - e**2 + dv < 0
            if ok:
                pr[r], pr[q], e, n = False, True, e_new, n + 1
                used |= {r, q}
                if nm is None:
                    prune[-s].pop(0)
        out[i] = torch.tensor(pr)
        swaps.append(n)
    return out, swaps


# ---------------------------------------------------------------- exact behaviour
def test_hand_computed_single_swap():
    # W = [1, 2, -1, 3], all means 1, variances 1, s = 1: Wanda prunes cols 0 and 1 (|W| 1, 2...).
    w = torch.tensor([[1.0, 2.0, -1.0, 3.0]])
    mean, var, sq = torch.ones(4), torch.ones(4), torch.full((4,), 2.0)
    mask = torch.tensor([[True, True, False, False]])
    # e = 1 + 2 = 3 > 0: regrow the largest D/var among pruned D > 0 -> col 1 (D = 2);
    # prune the least important kept D < 0 -> col 2 (D = -1). e' = 3 - 2 - 1 = 0: accepted, done.
    res = dsnot_refine(w, mask, mean, var, sq, threshold=0.0, variance_guard=False)
    assert res.mask.tolist() == [[True, False, True, False]]
    assert res.swaps.tolist() == [1] and res.num_swaps == 1 and res.cycles == 1
    assert res.error_before.tolist() == [3.0] and res.error_after.tolist() == [0.0]
    # scale = sqrt(sum W^2 (mu^2 + var)) = sqrt(2 * 15)
    assert res.scale.tolist() == [pytest.approx(math.sqrt(30.0))]
    # The guard: e^2 goes 9 -> 0 while the variance part changes by W_q^2 - W_r^2 = 1 - 4: accepted too.
    assert torch.equal(dsnot_refine(w, mask, mean, var, sq, threshold=0.0).mask, res.mask)


def test_hand_computed_overshoot_skips_the_regrow_candidate():
    # e = 0.5 + 3 = 3.5; best regrow by D/var is col 1 (D = 3, var 1) with q = col 3 (D = -4):
    # e' = 3.5 - 3 - 4 = -3.5, not lower: rejected, col 1 is skipped. Next regrow col 0 (D = 0.5):
    # e' = 3.5 - 0.5 - 4 = -1.0: accepted.
    w = torch.tensor([[0.5, 3.0, 5.0, -4.0]])
    mean, var = torch.ones(4), torch.ones(4)
    sq = torch.tensor([1.0, 1.0, 1.0, 0.25])  # Wanda of col 3: 4 * 0.5 = 2 < col 2's 5
    mask = torch.tensor([[True, True, False, False]])
    res = dsnot_refine(w, mask, mean, var, sq, threshold=0.0, variance_guard=False)
    assert res.mask.tolist() == [[False, True, False, True]]
    assert res.swaps.tolist() == [1] and res.cycles == 2  # the second cycle made the swap; then no D < 0 left
    assert res.error_after.tolist() == [-1.0]


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.05])
def test_matches_plain_python_reference(nm, guard, threshold):
    w, stats, _ = _layer(d_out=12, d_in=48, seed=1 + (nm or (0, 0))[1])
    mask = wanda_mask(w, stats.sq_norm, 0.5, nm=nm)
    res = dsnot_refine(w, mask, *_stats_args(stats), nm=nm, threshold=threshold, variance_guard=guard)
    ref_mask, ref_swaps = _ref_dsnot(w, mask, *_stats_args(stats), nm=nm, threshold=threshold, guard=guard)
    assert res.swaps.tolist() == ref_swaps
    assert torch.equal(res.mask, ref_mask)
    assert res.num_swaps > 0


@pytest.mark.parametrize("max_cycles, var_power", [(1, 1.0), (3, 0.0), (7, 2.0)])
def test_reference_with_few_cycles_and_other_var_power(max_cycles, var_power):
    w, stats, _ = _layer(d_out=10, d_in=40, seed=5)
    mask = wanda_mask(w, stats.sq_norm, 0.6)
    res = dsnot_refine(w, mask, *_stats_args(stats), max_cycles=max_cycles, threshold=0.0, var_power=var_power)
    ref_mask, ref_swaps = _ref_dsnot(w, mask, *_stats_args(stats), max_cycles=max_cycles, threshold=0.0,
                                     var_power=var_power)
    assert torch.equal(res.mask, ref_mask) and res.swaps.tolist() == ref_swaps
    assert max(ref_swaps) <= max_cycles and res.cycles <= max_cycles


def test_ties_take_the_lower_column_first():
    # Four identical pruned candidates (cols 0-3) and four identical kept ones (cols 4-7).
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, -0.5, -0.5, -0.5, -0.5]])
    ones = torch.ones(8)
    mask = torch.tensor([[True] * 4 + [False] * 4])
    res = dsnot_refine(w, mask, ones, ones, ones, max_cycles=1, threshold=0.0, variance_guard=False)
    assert res.mask.tolist() == [[False, True, True, True, True, False, False, False]]


def test_selection_tie_across_the_candidate_window():
    # More tied candidates than max_cycles: the lowest columns must be used, in order.
    cols = 40
    w = torch.cat([torch.full((1, 30), 1.0), torch.full((1, 10), -0.01)], 1)
    ones = torch.ones(cols)
    mask = torch.zeros(1, cols, dtype=torch.bool)
    mask[0, :30] = True
    res = dsnot_refine(w, mask, ones, ones, ones, max_cycles=3, threshold=0.0, variance_guard=False)
    ref_mask, _ = _ref_dsnot(w, mask, ones, ones, ones, max_cycles=3, threshold=0.0, guard=False)
    assert torch.equal(res.mask, ref_mask)
    assert res.mask[0, :3].tolist() == [False, False, False] and res.mask[0, 30:33].all()


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("init", ["wanda", "magnitude", "row-magnitude", "2:4", "4:8"])
def test_refined_masks_keep_counts_and_never_increase_the_error(init):
    w, stats, _ = _layer(d_out=96, d_in=128, seed=7)
    nm = {"2:4": (2, 4), "4:8": (4, 8)}.get(init)
    if init == "wanda":
        mask = wanda_mask(w, stats.sq_norm, 0.6)
    elif init == "magnitude":
        mask = magnitude_mask(w, 0.6)  # per-matrix: rows have different counts
    elif init == "row-magnitude":
        mask = magnitude_mask(w, 0.6, per_row=True)
    else:
        mask = nm_mask(w.abs(), *nm)
    before = _errors(w, mask, stats.mean)
    res = dsnot_refine(w, mask, *_stats_args(stats), nm=nm, threshold=0.0)
    after = _errors(w, res.mask, stats.mean)
    assert torch.equal(res.mask.sum(1), mask.sum(1))  # exact zeros per row
    if nm is not None:
        assert torch.all(res.mask.reshape(96, -1, nm[1]).sum(-1) == nm[0])
    tol = 1e-5 * res.scale.double()
    assert torch.all(after.abs() <= before.abs() + tol)
    assert int((after.abs() < 0.5 * before.abs()).sum()) > 96 * 0.6  # most rows clearly better
    # Reported errors agree with the independent computation.
    torch.testing.assert_close(res.error_before.double(), before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.error_after.double(), after, rtol=1e-4, atol=1e-4)
    # Swaps counted correctly: each swap flips one entry each way.
    assert torch.equal((res.mask != mask).sum(1), 2 * res.swaps)


def test_lowers_the_true_output_error_on_non_zero_mean_inputs():
    w, stats, x = _layer(d_out=64, d_in=256, seed=8, nseq=16, seqlen=64)
    for nm in (None, (2, 4)):
        mask = wanda_mask(w, stats.sq_norm, 0.5, nm=nm)
        res = dsnot_refine(w, mask, *_stats_args(stats), nm=nm)
        mse = lambda m: float(((x @ (w * m).T) ** 2).mean())  # noqa: E731  (dense - sparse output)
        assert mse(res.mask) < 0.9 * mse(mask), nm


def test_threshold_is_relative_to_the_row_scale():
    w, stats, _ = _layer(seed=9)
    mask = wanda_mask(w, stats.sq_norm, 0.5)
    res = dsnot_refine(w, mask, *_stats_args(stats), threshold=0.05)
    # the row's scale: sqrt(sum_j W_ij^2 (mu_j^2 + v_j)), its output RMS if channels were uncorrelated
    scale = (w.double().square() @ (stats.mean.double().square() + stats.var.double().clamp_min(0))).sqrt()
    torch.testing.assert_close(res.scale.double(), scale, rtol=1e-5, atol=1e-6)

    def relative(error):  # |e_i| / scale_i
        return error.abs().double() / res.scale.double()

    assert bool((res.scale > 0).all())
    stopped_early = relative(res.error_after) <= 0.05
    assert stopped_early.any()
    # Rescaling weights and inputs (x -> 10 x) changes nothing: the criterion is scale-free.
    big = dsnot_refine(w * 7.0, mask, stats.mean * 10, stats.var * 100, stats.sq_norm * 100, threshold=0.05)
    assert torch.equal(big.mask, res.mask)
    # A threshold above every row's relative error is the identity.
    high = float(relative(res.error_before).max()) + 1e-3
    assert torch.equal(dsnot_refine(w, mask, *_stats_args(stats), threshold=high).mask, mask)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_row_chunks_give_the_same_result(monkeypatch, nm):
    w, stats, _ = _layer(d_out=40, d_in=64, seed=17)
    mask = wanda_mask(w, stats.sq_norm, 0.5, nm=nm)
    whole = dsnot_refine(w, mask, *_stats_args(stats), nm=nm, reference_weight=w * 1.1)
    monkeypatch.setattr(masks_mod, "CHUNK_ELEMS", 150)  # 2 rows per chunk, 20 chunks
    chunked = dsnot_refine(w, mask, *_stats_args(stats), nm=nm, reference_weight=w * 1.1)
    assert whole.num_swaps > 0 and torch.equal(chunked.mask, whole.mask)
    assert torch.equal(chunked.swaps, whole.swaps)
    for k in ("error_before", "error_after", "scale"):  # BLAS sums may round differently per chunk
        torch.testing.assert_close(getattr(chunked, k), getattr(whole, k), rtol=1e-5, atol=1e-5, msg=k)


def test_max_cycles_zero_is_identity_and_inputs_untouched():
    w, stats, _ = _layer(seed=10)
    mask = wanda_mask(w, stats.sq_norm, 0.5)
    w0, m0, mean0 = w.clone(), mask.clone(), stats.mean.clone()
    res = dsnot_refine(w, mask, *_stats_args(stats), max_cycles=0)
    assert torch.equal(res.mask, mask) and res.mask is not mask
    assert res.num_swaps == 0 and res.cycles == 0
    assert torch.equal(res.error_before, res.error_after)
    full = dsnot_refine(w, mask, *_stats_args(stats))
    assert full.num_swaps > 0
    assert torch.equal(w, w0) and torch.equal(mask, m0) and torch.equal(stats.mean, mean0)


def test_dead_and_constant_channels_are_finite_and_dead_ones_never_grown():
    g = _gen(11)
    x = torch.randn(4, 32, 48, generator=g) + torch.randn(48, generator=g)
    x[..., :6] = 0.0  # dead channels: mean 0, var 0
    x[..., 6:9] = 2.5  # constant channels: var 0, mean 2.5
    stats = InputStats(48)
    stats.update(x)
    assert torch.all(stats.var[:9] == 0)
    w = torch.randn(16, 48, generator=g)
    mask = magnitude_mask(w, 0.5, per_row=True)
    mask[:, :6] = True  # all dead inputs pruned, and pruned ones elsewhere kept: rebalance counts
    for nm in (None, (2, 4)):
        m = mask if nm is None else nm_mask(torch.where(torch.arange(48) < 6, 0.0, w.abs()), *nm)
        res = dsnot_refine(w, m, *_stats_args(stats), nm=nm, threshold=0.0)
        assert torch.isfinite(res.error_after).all() and torch.isfinite(res.scale).all()
        assert torch.equal(res.mask[:, :6], m[:, :6])  # a dead channel never changes state
        assert res.mask[:, :6].sum() >= 16 * 3 and res.num_swaps > 0
        assert torch.equal(res.mask.sum(1), m.sum(1))
    # All statistics zero (every channel dead): nothing to do, nothing breaks.
    zero = torch.zeros(48)
    res = dsnot_refine(w, mask, zero, zero, zero)
    assert torch.equal(res.mask, mask) and res.num_swaps == 0 and torch.all(res.scale == 0)


def test_constant_channels_are_preferred_for_regrowth():
    # Same expected contribution, one channel with no variance: regrowing it adds no variance.
    w = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    mean = torch.ones(4)
    var = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.tensor([[True, True, False, False]])
    res = dsnot_refine(w, mask, mean, var, mean.square() + var, max_cycles=1, threshold=0.0)
    assert res.mask.tolist() == [[True, False, True, False]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_match_fp32_of_the_same_values(dtype):
    w, stats, _ = _layer(seed=12)
    wl = w.to(dtype)
    mask = wanda_mask(wl, stats.sq_norm, 0.5, nm=(2, 4))
    res = dsnot_refine(wl, mask, *_stats_args(stats), nm=(2, 4))
    ref = dsnot_refine(wl.float(), mask, *_stats_args(stats), nm=(2, 4))
    assert torch.equal(res.mask, ref.mask) and res.num_swaps == ref.num_swaps > 0
    assert res.error_after.dtype == torch.float32


def test_reference_weight_measures_error_against_the_dense_layer():
    w, stats, _ = _layer(d_out=16, d_in=64, seed=13)
    mask = wanda_mask(w, stats.sq_norm, 0.5)
    # Passing the same weights as the reference changes nothing.
    a = dsnot_refine(w, mask, *_stats_args(stats))
    b = dsnot_refine(w, mask, *_stats_args(stats), reference_weight=w.clone())
    assert torch.equal(a.mask, b.mask)
    # Updated weights (as after an OBS update) against the dense ones: python reference agrees.
    upd = w + 0.3 * torch.randn(w.shape, generator=_gen(14))
    res = dsnot_refine(upd, mask, *_stats_args(stats), reference_weight=w, threshold=0.0)
    ref_mask, ref_swaps = _ref_dsnot(upd, mask, *_stats_args(stats), threshold=0.0, ref=w)
    assert torch.equal(res.mask, ref_mask) and res.swaps.tolist() == ref_swaps
    before, after = _errors(upd, mask, stats.mean, w), _errors(upd, res.mask, stats.mean, w)
    torch.testing.assert_close(res.error_before.double(), before, rtol=1e-4, atol=1e-4)
    assert torch.all(after.abs() <= before.abs() + 1e-5 * res.scale.double())


def test_after_sparsegpt_with_unmasked_updated_weights():
    g = _gen(15)
    x = torch.randn(8, 32, 64, generator=g) + 1.5 * torch.randn(64, generator=g)
    stats = InputStats(64, hessian=True)
    stats.update(x)
    w = torch.randn(16, 64, generator=g)
    sgpt = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=16)
    # SparseGPT's weights are zero where pruned: with nothing to regrow the mask is unchanged.
    res = dsnot_refine(sgpt.weight, sgpt.mask, *_stats_args(stats), reference_weight=w, threshold=0.0)
    assert torch.equal(res.mask, sgpt.mask) and res.num_swaps == 0
    # With values to regrow (here the dense ones), rows improve and never get worse.
    values = torch.where(sgpt.mask, w, sgpt.weight)
    res = dsnot_refine(values, sgpt.mask, *_stats_args(stats), reference_weight=w, threshold=0.0)
    before, after = _errors(values, sgpt.mask, stats.mean, w), _errors(values, res.mask, stats.mean, w)
    assert torch.all(after.abs() <= before.abs() + 1e-5 * res.scale.double())
    assert torch.equal(res.mask.sum(1), sgpt.mask.sum(1))


def test_bad_arguments_are_refused():
    w, stats, _ = _layer(d_out=4, d_in=16, seed=16)
    mask = wanda_mask(w, stats.sq_norm, 0.5)
    args = _stats_args(stats)
    with pytest.raises(ValueError, match="bool mask"):
        dsnot_refine(w, mask.float(), *args)
    with pytest.raises(ValueError, match=r"mean must have shape \[16\]"):
        dsnot_refine(w, mask, stats.mean[:-1], stats.var, stats.sq_norm)
    with pytest.raises(ValueError, match="divisible"):
        dsnot_refine(w, mask, *args, nm=(2, 3))
    with pytest.raises(ValueError, match="max_cycles"):
        dsnot_refine(w, mask, *args, max_cycles=-1)
    with pytest.raises(ValueError, match="non-finite"):
        dsnot_refine(w, mask, torch.full((16,), float("nan")), stats.var, stats.sq_norm)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_cuda_matches_cpu(nm):
    w, stats, _ = _layer(d_out=48, d_in=128, seed=18)
    w = w.to(torch.bfloat16)
    mask = wanda_mask(w, stats.sq_norm, 0.5, nm=nm)
    cpu = dsnot_refine(w, mask, *_stats_args(stats), nm=nm)
    gpu = dsnot_refine(w.cuda(), mask.cuda(), *_stats_args(stats), nm=nm)  # statistics follow the weight
    assert gpu.mask.device.type == "cuda" and gpu.swaps.device.type == "cuda"
    assert torch.equal(gpu.mask.cpu(), cpu.mask) and torch.equal(gpu.swaps.cpu(), cpu.swaps)
    torch.testing.assert_close(gpu.error_after.cpu(), cpu.error_after, rtol=1e-4, atol=1e-4)

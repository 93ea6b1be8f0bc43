"""Pruning math: exact masks, Wanda on hand-built layers, SparseGPT against a naive OBS."""

from __future__ import annotations

import math
import re

import pytest
import torch

from sparsekit.calibration.stats import InputStats
from sparsekit.pruning import masks as masks_mod
from sparsekit.pruning.masks import (
    apply_mask_,
    magnitude_mask,
    nm_mask,
    num_pruned,
    parse_pattern,
    row_mask,
    wanda_mask,
    wanda_scores,
)
from sparsekit.pruning.methods import METHODS, SparseGPTOptions
from sparsekit.pruning.plugins import SelectArgs
from sparsekit.pruning.sparsegpt import inverse_hessian_factor, sparsegpt_prune


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ref_lowest(values, k):
    """Indices of the k lowest values, ties to the lower index (plain Python)."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return set(order[:k])


def _ref_row_mask(scores, k):
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for r, row in enumerate(scores.tolist()):
        out[r, list(_ref_lowest(row, k))] = True
    return out


# ---------------------------------------------------------------- patterns
@pytest.mark.parametrize(
    "text, expected",
    [("unstructured", None), ("Unstructured", None), ("2:4", (2, 4)), ("4:8", (4, 8)), (" 1:4 ", (1, 4)), ("3:16", (3, 16))],
)
def test_parse_pattern_valid(text, expected):
    assert parse_pattern(text) == expected


@pytest.mark.parametrize("text", ["4:2", "0:4", "4:4", "2:4:8", "a:b", "2/4", "", "-1:4", "50%"])
def test_parse_pattern_invalid(text):
    with pytest.raises(ValueError, match="pattern"):
        parse_pattern(text)


def test_num_pruned_is_exact_floor_and_validates():
    assert num_pruned(100, 0.29) == 29  # float math gives floor(28.999999999999996) = 28
    assert num_pruned(4096, 0.7) == 2867
    assert num_pruned(7, 0.0) == 0 and num_pruned(7, 1.0) == 7
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            num_pruned(10, bad)


# ---------------------------------------------------------------- N:M
@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("kind", ["random", "tied"])
def test_nm_mask_exact_and_matches_reference(n, m, kind):
    g = _gen(n * 10 + m)
    if kind == "random":
        scores = torch.rand(9, 4 * m, generator=g)
    else:  # many ties: integers in {0, 1, 2}
        scores = torch.randint(0, 3, (9, 4 * m), generator=g).float()
    mask = nm_mask(scores, n, m)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    groups = mask.reshape(9, -1, m)
    assert torch.all(groups.sum(-1) == n)
    expected = _ref_row_mask(scores.reshape(-1, m), n).reshape(scores.shape)
    assert torch.equal(mask, expected)


def test_nm_mask_all_tied_prunes_first_columns_of_each_group():
    mask = nm_mask(torch.ones(3, 8), 2, 4)
    assert mask[0].tolist() == [True, True, False, False] * 2
    assert torch.equal(mask[1], mask[0]) and torch.equal(mask[2], mask[0])


def test_nm_mask_refuses_indivisible_width():
    with pytest.raises(ValueError, match=r"in_features=10.*% 4 = 2"):
        nm_mask(torch.rand(3, 10), 2, 4)
    with pytest.raises(ValueError):
        nm_mask(torch.rand(3, 8), 4, 4)


# ---------------------------------------------------------------- rows / magnitude
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.73, 1.0])
def test_row_mask_exact_per_row(p):
    scores = torch.randint(0, 4, (7, 30), generator=_gen(3)).float()  # ties everywhere
    mask = row_mask(scores, p)
    k = math.floor(30 * p + 1e-9)
    assert torch.all(mask.sum(1) == k)
    assert torch.equal(mask, _ref_row_mask(scores, k))


def test_magnitude_mask_exact_count_and_threshold():
    w = torch.randn(37, 53, generator=_gen(4))
    for p in (0.3, 0.5, 0.9):
        mask = magnitude_mask(w, p)
        assert int(mask.sum()) == math.floor(w.numel() * p)
        assert w.abs()[mask].max() <= w.abs()[~mask].min()
        rows = magnitude_mask(w, p, per_row=True)
        assert torch.all(rows.sum(1) == math.floor(53 * p))
        assert torch.equal(rows, _ref_row_mask(w.abs(), math.floor(53 * p)))


def test_magnitude_mask_ties_break_by_row_major_index():
    w = torch.tensor([[1.0, -2.0, 1.0], [-1.0, 3.0, 1.0]])
    # |W| = [[1,2,1],[1,3,1]]; prune 3 of 6: the four 1's tie -> flat indices 0, 2, 3 first.
    expected = torch.tensor([[True, False, True], [True, False, False]])
    assert torch.equal(magnitude_mask(w, 0.5), expected)
    big = torch.randint(-2, 3, (64, 96), generator=_gen(5)).float()
    k = math.floor(big.numel() * 0.6)
    flat = _ref_lowest(big.abs().flatten().tolist(), k)
    ref = torch.zeros(big.numel(), dtype=torch.bool)
    ref[list(flat)] = True
    assert torch.equal(magnitude_mask(big, 0.6), ref.reshape(big.shape))


# ---------------------------------------------------------------- Wanda
W_HAND = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, -1.0, 2.0]])
S_HAND = torch.tensor([4.0, 1.0, 0.25, 0.0])  # sqrt -> [2, 1, 0.5, 0]


def test_wanda_scores_hand_computed():
    expected = torch.tensor([[2.0, 2.0, 1.5, 0.0], [1.0, 0.5, 0.5, 0.0]])
    got = wanda_scores(W_HAND, S_HAND)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
    assert torch.equal(wanda_scores(W_HAND.to(torch.bfloat16), S_HAND), expected)


def test_wanda_mask_hand_derived():
    # p=0.5 prunes 2 per row. Row 0: scores [2,2,1.5,0] -> cols 3, 2.
    # Row 1: [1,.5,.5,0] -> col 3, then the 0.5 tie goes to the lower column 1.
    assert wanda_mask(W_HAND, S_HAND, 0.5).tolist() == [[False, False, True, True], [False, True, False, True]]
    # p=0.75 prunes 3; row 0 ties 2 vs 2 at cols 0/1 -> col 0. Row 1: cols 3, 1, 2.
    assert wanda_mask(W_HAND, S_HAND, 0.75).tolist() == [[True, False, True, True], [False, True, True, True]]
    # 2:4 on one group of 4 equals the p=0.5 row answer here.
    assert wanda_mask(W_HAND, S_HAND, 0.5, nm=(2, 4)).tolist() == [[False, False, True, True], [False, True, False, True]]
    # Wanda differs from magnitude: row 0's largest |W| (col 3) is pruned because its input is dead.
    assert not magnitude_mask(W_HAND, 0.5, per_row=True)[0, 3]


def test_wanda_mask_exact_per_row_large():
    w = torch.randn(64, 256, generator=_gen(6))
    s = torch.rand(256, generator=_gen(7))
    mask = wanda_mask(w, s, 0.6)
    assert torch.all(mask.sum(1) == math.floor(256 * 0.6))
    nm = wanda_mask(w, s, 0.5, nm=(4, 8))
    assert torch.all(nm.reshape(64, -1, 8).sum(-1) == 4)
    # Which entries: an independent score (fp64) and the plain-Python lowest-k reference.
    score = w.double().abs() * s.double().sqrt()
    assert torch.equal(mask, _ref_row_mask(score, math.floor(256 * 0.6)))
    assert torch.equal(nm, _ref_row_mask(score.reshape(-1, 8), 4).reshape(64, 256))
    with pytest.raises(ValueError, match=r"\[256\]"):
        wanda_scores(w, s[:-1])


def test_apply_mask_writes_positive_zero():
    w = -torch.rand(4, 8, generator=_gen(8)) - 0.1
    keep = w.clone()
    mask = nm_mask(torch.rand(4, 8, generator=_gen(9)), 2, 4)
    apply_mask_(w, mask)
    assert torch.all(w[mask] == 0) and not torch.signbit(w[mask]).any()
    assert torch.equal(w[~mask], keep[~mask])
    p = torch.nn.Parameter(keep.clone())
    apply_mask_(p, mask)  # works on parameters requiring grad
    assert torch.all(p.detach()[mask] == 0)
    with pytest.raises(ValueError, match="bool"):
        apply_mask_(w, mask.float())


# ---------------------------------------------------------------- SparseGPT helpers
def _correlated(d_in=64, nseq=4, seqlen=64, seed=10):
    g = _gen(seed)
    mix = torch.randn(d_in, d_in, generator=g) / math.sqrt(d_in) + 2.0 * torch.eye(d_in)
    mix[:, : d_in // 2] += torch.randn(d_in, 1, generator=g)  # strong shared component
    x = torch.randn(nseq, seqlen, d_in, generator=g) @ mix
    stats = InputStats(d_in, hessian=True)
    stats.update(x)
    return x, stats  # [nseq, seqlen, d_in]: exactly what the statistics saw (nseq sequences)


def _recon_error(x, w, w_new):
    return float(torch.linalg.matrix_norm(x.reshape(-1, x.shape[-1]) @ (w - w_new).T))


def _damped(h, percdamp):
    h = h.double().clone()
    h += percdamp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return h


def _naive_obs(w, h, sparsity, nm, block, percdamp):
    """Straightforward OBS in fp64 with explicit inverses of the remaining sub-Hessian.

    Column j is fixed in order; pruning w_rj moves row r by
    -w_rj / [H_F^-1]_00 * [H_F^-1]_0,: with F = {j, ..., d-1}. Masks: at each block
    start (unstructured, exact flattened count) or each group start (N:M), scores
    w^2 / [H_{F_k}^-1]_00 of the current weights.
    """
    w = w.double().clone()
    hd = _damped(h, percdamp)
    rows, cols = w.shape
    inv_diag = torch.stack([torch.linalg.inv(hd[k:, k:])[0, 0] for k in range(cols)])
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if nm is None and j % block == 0:
            blk = slice(j, min(j + block, cols))
            scores = (w[:, blk] ** 2 / inv_diag[blk]).flatten().tolist()
            k = math.floor(len(scores) * sparsity)
            sel = torch.zeros(len(scores), dtype=torch.bool)
            sel[list(_ref_lowest(scores, k))] = True
            mask[:, blk] = sel.reshape(rows, -1)
        if nm is not None and j % nm[1] == 0:
            g = slice(j, j + nm[1])
            mask[:, g] = _ref_row_mask(w[:, g] ** 2 / inv_diag[g], nm[0])
        hinv = torch.linalg.inv(hd[j:, j:])
        for r in range(rows):
            if mask[r, j]:
                w[r, j:] -= w[r, j] / hinv[0, 0] * hinv[0]
                w[r, j] = 0.0
    return w, mask


# ---------------------------------------------------------------- SparseGPT
def test_sparsegpt_unstructured_sparsity_and_inputs_untouched():
    x, stats = _correlated()
    w = torch.randn(24, 64, generator=_gen(11))
    w_in, h_in = w.clone(), stats.hessian.clone()
    res = sparsegpt_prune(w, stats.hessian, 0.6, blocksize=24)  # blocks of 24, 24, 16 columns
    expected = sum(math.floor(24 * c * 0.6) for c in (24, 24, 16))
    assert int(res.mask.sum()) == expected
    assert int(res.mask[:, :24].sum()) == math.floor(24 * 24 * 0.6)
    assert torch.all(res.weight[res.mask] == 0) and not torch.signbit(res.weight[res.mask]).any()
    assert torch.equal(w, w_in) and torch.equal(stats.hessian, h_in)
    assert res.weight.dtype == w.dtype and res.retries == 0 and res.damp_used == 0.01
    assert res.fallback is None and math.isfinite(res.loss) and res.loss > 0


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_sparsegpt_nm_exact(n, m):
    _, stats = _correlated()
    w = torch.randn(16, 64, generator=_gen(12)).to(torch.bfloat16)
    res = sparsegpt_prune(w, stats.hessian, 0.5, nm=(n, m), blocksize=16)
    assert res.weight.dtype == torch.bfloat16
    assert torch.all(res.mask.reshape(16, -1, m).sum(-1) == n)
    assert torch.all(res.weight[res.mask] == 0)
    with pytest.raises(ValueError, match="multiple"):
        sparsegpt_prune(w, stats.hessian, 0.5, nm=(n, m), blocksize=m + 2)


def test_sparsegpt_zero_sparsity_is_identity():
    _, stats = _correlated()
    w = torch.randn(8, 64, generator=_gen(13))
    res = sparsegpt_prune(w, stats.hessian, 0.0, blocksize=16)
    assert torch.equal(res.weight, w) and not res.mask.any() and res.loss == 0.0


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_beats_wanda_on_correlated_inputs(nm):
    x, stats = _correlated()
    w = torch.randn(32, 64, generator=_gen(14))
    res = sparsegpt_prune(w, stats.hessian, 0.5, nm=nm, blocksize=16)
    wanda = w.clone()
    apply_mask_(wanda, wanda_mask(w, stats.sq_norm, 0.5, nm=nm))
    err_sgpt, err_wanda = _recon_error(x, w, res.weight), _recon_error(x, w, wanda)
    assert err_sgpt < 0.85 * err_wanda, (err_sgpt, err_wanda)
    # Same mask without the OBS update is worse: the update itself helps.
    masked_only = w.clone()
    apply_mask_(masked_only, res.mask)
    assert err_sgpt < _recon_error(x, w, masked_only)


def test_sparsegpt_loss_is_the_damped_quadratic_form():
    _, stats = _correlated()
    w = torch.randn(12, 64, generator=_gen(15))
    res = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=16)
    delta = (w - res.weight).double()
    quad = 0.5 * float(((delta @ _damped(stats.hessian, res.damp_used)) * delta).sum())
    assert res.loss == pytest.approx(quad, rel=1e-3)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4)])
def test_sparsegpt_nm_matches_naive_obs_for_any_blocksize(nm):
    # With N:M, each group's mask is chosen after all earlier columns are updated,
    # so blocking (lazy updates) must not change anything: every blocksize equals
    # the un-blocked naive OBS.
    _, stats = _correlated(d_in=16, nseq=2, seqlen=32, seed=20)
    w = torch.randn(6, 16, generator=_gen(21))
    ref_w, ref_mask = _naive_obs(w, stats.hessian, 0.5, nm, 16, 0.01)
    for bs in (4, 8, 16, 128):
        res = sparsegpt_prune(w, stats.hessian, 0.5, nm=nm, blocksize=bs)
        assert torch.equal(res.mask, ref_mask), bs
        torch.testing.assert_close(res.weight.double(), ref_w, rtol=1e-4, atol=1e-4, msg=str(bs))


@pytest.mark.parametrize("bs", [8, 16])
def test_sparsegpt_unstructured_matches_naive_obs(bs):
    _, stats = _correlated(d_in=16, nseq=2, seqlen=32, seed=22)
    w = torch.randn(6, 16, generator=_gen(23))
    ref_w, ref_mask = _naive_obs(w, stats.hessian, 0.5, None, bs, 0.01)
    res = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=bs)
    assert torch.equal(res.mask, ref_mask)
    torch.testing.assert_close(res.weight.double(), ref_w, rtol=1e-4, atol=1e-4)


def test_sparsegpt_dead_and_rank_deficient_inputs():
    g = _gen(30)
    x = torch.randn(1, 8, 32, generator=g)  # 8 tokens < 32 channels: rank deficient
    x[..., [3, 10]] = 0.0  # two dead channels
    stats = InputStats(32, hessian=True)
    stats.update(x)
    w = torch.randn(10, 32, generator=g)
    res = sparsegpt_prune(w, stats.hessian, 0.5, blocksize=16)
    assert res.dead_columns == 2 and res.retries == 0
    assert torch.isfinite(res.weight).all() and math.isfinite(res.loss)
    assert res.mask[:, [3, 10]].all()  # free to prune: pruned first
    assert int(res.mask.sum()) == 2 * math.floor(10 * 16 * 0.5)


def test_sparsegpt_negative_eigenvalue_retries_with_more_damping():
    _, stats = _correlated(d_in=32, seed=31)
    h = stats.hessian.double()
    evals, evecs = torch.linalg.eigh(h)
    d, tr, v = h.shape[0], float(h.diagonal().sum()), evecs[:, 0:1]
    # Push the smallest eigenvalue to -5% of the (new) mean diagonal:
    # damping 0.01 cannot fix it, 0.1 can.
    c = (float(evals[0]) + 0.05 * tr / d) / (1 - 0.05 / d)
    bad = (h - c * v @ v.T).float()
    w = torch.randn(8, 32, generator=_gen(32))
    res = sparsegpt_prune(w, bad, 0.5, blocksize=16)
    assert res.retries == 1 and res.damp_used == pytest.approx(0.1) and res.fallback is None
    assert torch.isfinite(res.weight).all() and int(res.mask.sum()) == 2 * math.floor(8 * 16 * 0.5)


@pytest.mark.parametrize("kind, fallback", [("nan", "identity"), ("negative", "identity"), ("indefinite", "diagonal")])
def test_sparsegpt_hopeless_hessian_falls_back(kind, fallback):
    d = 16
    if kind == "nan":
        h = torch.full((d, d), float("nan"))
    elif kind == "negative":
        h = -torch.eye(d)
    else:  # positive diagonal, hugely indefinite off-diagonal
        h = torch.eye(d) + 1e6 * (torch.ones(d, d) - torch.eye(d)) * torch.tensor([1.0, -1.0]).repeat(d // 2)
        h = (h + h.T) / 2
    w = torch.randn(6, d, generator=_gen(33))
    res = sparsegpt_prune(w, h, 0.5, nm=(2, 4), blocksize=8)
    assert res.fallback == fallback and res.retries == 3 and res.damp_used == pytest.approx(10.0)
    assert torch.isfinite(res.weight).all()
    assert torch.all(res.mask.reshape(6, -1, 4).sum(-1) == 2)
    # No usable curvature: no updates, only the masked entries change.
    assert torch.equal(res.weight[~res.mask], w[~res.mask])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, stats = _correlated()
    w = torch.randn(32, 64, generator=_gen(40))
    assert x.dim() == 3  # both sides count the same 4 sequences
    cuda_stats = InputStats(64, hessian=True)
    cuda_stats.update(x.cuda())
    assert cuda_stats.device.type == "cuda" and cuda_stats.nsamples == stats.nsamples == 4
    torch.testing.assert_close(cuda_stats.hessian.cpu(), stats.hessian, rtol=1e-4, atol=1e-3)
    for k in ("sq_norm", "mean", "var"):
        torch.testing.assert_close(getattr(cuda_stats, k).cpu(), getattr(stats, k), rtol=1e-4, atol=1e-4)
    assert torch.equal(wanda_mask(w.cuda(), stats.sq_norm, 0.5).cpu(), wanda_mask(w, stats.sq_norm, 0.5))
    assert torch.equal(magnitude_mask(w.cuda(), 0.5).cpu(), magnitude_mask(w, 0.5))
    for nm in (None, (2, 4)):
        a = sparsegpt_prune(w.cuda(), stats.hessian.cuda(), 0.5, nm=nm, blocksize=16)
        b = sparsegpt_prune(w, stats.hessian, 0.5, nm=nm, blocksize=16)
        assert a.weight.device.type == "cuda" and a.mask.device.type == "cuda"
        assert torch.equal(a.mask.cpu(), b.mask)
        torch.testing.assert_close(a.weight.cpu(), b.weight, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- row chunks
@pytest.mark.parametrize("chunk", [1, 100, 400])
def test_masks_over_many_row_chunks_match_reference(monkeypatch, chunk):
    # CHUNK_ELEMS scores per chunk: 40 columns -> 1, 2 or 10 rows per chunk, with a short last
    # chunk; 4-column N:M groups -> 1, 25 or 100 group-rows per chunk.
    monkeypatch.setattr(masks_mod, "CHUNK_ELEMS", chunk)
    g = _gen(50)
    scores = torch.randint(0, 5, (23, 40), generator=g).float()  # many ties
    assert torch.equal(row_mask(scores, 0.45), _ref_row_mask(scores, math.floor(40 * 0.45)))
    assert torch.equal(nm_mask(scores, 2, 4), _ref_row_mask(scores.reshape(-1, 4), 2).reshape(23, 40))
    w, s = torch.randn(23, 40, generator=g), torch.rand(40, generator=g)
    assert torch.equal(wanda_mask(w, s, 0.5), _ref_row_mask(w.double().abs() * s.double().sqrt(), 20))
    assert torch.equal(magnitude_mask(w, 0.5, per_row=True), _ref_row_mask(w.abs(), 20))


def test_mask_of_a_layer_bigger_than_one_chunk():
    rows, cols = 1100, 4096  # 4.5M scores: two chunks at the default size
    assert rows * cols > masks_mod.CHUNK_ELEMS
    g = _gen(51)
    w, s = torch.randn(rows, cols, generator=g), torch.rand(cols, generator=g)
    k = math.floor(cols * 0.5)
    mask = wanda_mask(w, s, 0.5)
    score = w.double().abs() * s.double().sqrt()
    expected = torch.zeros(rows, cols, dtype=torch.bool)
    expected.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
    assert torch.equal(mask, expected)
    assert torch.equal(mask[-1], expected[-1]) and int(mask[-76:].sum()) == 76 * k  # the last chunk too


# ---------------------------------------------------------------- SparseGPT numerics
def test_sparsegpt_diagonal_fallback_uses_rsqrt_of_the_damped_diagonal():
    d = 16
    diag = torch.linspace(1.0, 40.0, d)  # NOT unit: sqrt and rsqrt differ
    sign = torch.tensor([1.0, -1.0]).repeat(d // 2)
    off = 1e6 * (torch.ones(d, d) - torch.eye(d)) * sign
    h = torch.diag(diag) + (off + off.T) / 2  # hugely indefinite: every damping fails
    u, damp, retries, fallback, dead = inverse_hessian_factor(h, 0.01, 3)
    assert (fallback, retries) == ("diagonal", 3) and damp == pytest.approx(10.0) and not dead.any()
    damped = diag.double() + 10.0 * diag.double().mean()
    torch.testing.assert_close(u.double(), torch.diag(damped.rsqrt()), rtol=1e-6, atol=0.0)
    w = torch.randn(6, d, generator=_gen(52))
    res = sparsegpt_prune(w, h, 0.5, nm=(2, 4), blocksize=8)
    # Scores w^2 / U_jj^2 = w^2 (H_jj + damp * mean H_jj); a diagonal U gives no updates.
    score = w.double() ** 2 * damped
    assert torch.equal(res.mask, _ref_row_mask(score.reshape(-1, 4), 2).reshape(6, d))
    assert torch.equal(res.weight[~res.mask], w[~res.mask])
    assert res.loss == pytest.approx(0.5 * float(score[res.mask].sum()), rel=1e-5)


def _hessian_needing_damping(frac, d=32, seed=31):
    """A Hessian whose smallest eigenvalue is -frac * (its mean diagonal)."""
    _, stats = _correlated(d_in=d, seed=seed)
    h = stats.hessian.double()
    evals, evecs = torch.linalg.eigh(h)
    v = evecs[:, 0:1]
    # new min eigenvalue evals[0] - c, new mean diagonal (trace - c) / d
    c = (float(evals[0]) + frac * float(h.diagonal().sum()) / d) / (1 + frac / d)
    return (h - c * v @ v.T).float()


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_retries_equal_a_direct_run_at_the_final_damping(nm):
    bad = _hessian_needing_damping(0.5)  # 0.01 and 0.1 fail, 1.0 works
    keep = bad.clone()
    w = torch.randn(8, 32, generator=_gen(53))
    res = sparsegpt_prune(w, bad, 0.5, nm=nm, blocksize=16)
    assert res.retries == 2 and res.damp_used == pytest.approx(1.0) and res.fallback is None
    assert torch.equal(bad, keep)
    # Damping does not accumulate over retries (0.01 + 0.1 + 1.0): same as a direct run at 1.0.
    direct = sparsegpt_prune(w, bad, 0.5, nm=nm, blocksize=16, percdamp=res.damp_used, max_retries=0)
    assert direct.retries == 0 and direct.damp_used == res.damp_used and direct.fallback is None
    assert torch.equal(res.mask, direct.mask) and torch.equal(res.weight, direct.weight)
    assert res.loss == direct.loss
    # Fewer retries allowed than needed: the diagonal fallback, at the last damping tried.
    short = sparsegpt_prune(w, bad, 0.5, nm=nm, blocksize=16, max_retries=1)
    assert short.fallback == "diagonal" and short.retries == 1 and short.damp_used == pytest.approx(0.1)


def _stats_with_hessian(h):
    d = h.shape[0]
    return InputStats.from_state_dict({
        "nsamples": torch.tensor([1]), "ntokens": torch.tensor([1]), "sq_norm": torch.ones(d),
        "mean": torch.zeros(d), "m2": torch.zeros(d), "hessian": h,
    })


def test_sparsegpt_method_reports_damping_retries_and_fallback():
    select = METHODS["sparsegpt"].select
    args = SelectArgs(0.5, options=SparseGPTOptions(blocksize=16))
    w = torch.randn(8, 32, generator=_gen(54))
    bad = _hessian_needing_damping(0.5)
    out = select(w, _stats_with_hessian(bad), args)
    assert re.search(r"dampening raised to 1\b", out.note) and "fell back" not in out.note
    ref = sparsegpt_prune(w, bad, 0.5, blocksize=16)
    assert torch.equal(out.weight, ref.weight) and torch.equal(out.mask, ref.mask)
    _, good = _correlated(d_in=32, seed=55)
    assert select(w, good, args).note == ""
    out = select(w, _stats_with_hessian(-torch.eye(32)), args)
    assert re.search(r"dampening raised to 10\b.*identity", out.note)

"""Layerwise sparsity allocation: OWL / DLP statistics and formulas by hand, weighted targets,
clamping (the allocation file format: tests/files/test_allocation_file.py)."""

from __future__ import annotations

import random

import pytest
import torch

from sparsekit.pruning.allocation import allocate, dlp_importance, owl_outlier_ratio, weighted_mean


# ---------------------------------------------------------------- statistics
def test_owl_outlier_ratio_pools_all_linears_of_the_layer():
    # Pooled: nine 1's and one 11 -> mean 2, cut 5 * 2 = 10 -> one of ten above: 10 %.
    a, b = torch.ones(3, 3), torch.tensor([[11.0]])
    assert owl_outlier_ratio([a, b], m=5.0) == pytest.approx(10.0)
    # Per-tensor ratios would be 0 % and 0 % (b alone: 11 > 55 is false): pooling matters.
    assert owl_outlier_ratio([b], m=5.0) == 0.0
    # Strictly greater: 5 is not above 5 * mean(=1).
    assert owl_outlier_ratio([torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0])], m=5.0) == 0.0
    assert owl_outlier_ratio([torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0])], m=4.0) == pytest.approx(20.0)
    assert owl_outlier_ratio([torch.ones(2, 2, dtype=torch.bfloat16)], m=0.5) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="positive"):
        owl_outlier_ratio([a], m=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        owl_outlier_ratio([torch.empty(0)])


def test_dlp_importance_mean_and_median_of_pooled_scores():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0, 4.0], [5.0, 6.0]])
    assert dlp_importance([a, b]) == pytest.approx(3.5)  # not the mean of means (3.0)
    assert dlp_importance([a, b], reduction="median") == 3.0  # lower middle of 1..6
    assert dlp_importance([torch.tensor([7.0, 1.0, 4.0])], reduction="median") == 4.0
    with pytest.raises(ValueError, match="median"):
        dlp_importance([a], reduction="max")


# ---------------------------------------------------------------- formulas by hand
def test_owl_hand_computed():
    # LODs 10, 20, 30 -> normalised 0, .5, 1; S - 2 * 0.08 * (n - 0.5).
    got = allocate("owl", [10.0, 20.0, 30.0], [5, 5, 5], 0.7)
    assert got == pytest.approx([0.78, 0.70, 0.62], abs=1e-12)


def _dlp_reference(values, target, alpha):
    """DLP as the reference computes it (equal layer sizes): r = 1 - v / sum v, min-max, centre."""
    r = [1 - v / sum(values) for v in values]
    norm = [(x - min(r)) / (max(r) - min(r)) * 2 * alpha for x in r]
    density = [x - sum(norm) / len(norm) + (1 - target) for x in norm]
    return [1 - d for d in density]


def test_dlp_hand_computed_and_matches_the_reference_form():
    got = allocate("dlp", [1.0, 2.0, 4.0], [7, 7, 7], 0.7)
    # normalised 0, 1/3, 1 (mean 4/9): 0.7 + 0.3 * (n - 4/9)
    assert got == pytest.approx([0.7 - 0.3 * 4 / 9, 0.7 - 0.3 / 9, 0.7 + 0.3 * 5 / 9], abs=1e-12)
    assert got == pytest.approx(_dlp_reference([1.0, 2.0, 4.0], 0.7, 0.15), abs=1e-12)
    rng = random.Random(3)
    vals = [rng.uniform(0.1, 5.0) for _ in range(12)]
    assert allocate("dlp", vals, [1] * 12, 0.6, alpha=0.1) == pytest.approx(_dlp_reference(vals, 0.6, 0.1), abs=1e-12)


def test_directions_and_spread():
    vals = [3.0, 1.0, 2.0, 8.0]
    owl = allocate("owl", vals, [1] * 4, 0.5, lam=0.05)
    dlp = allocate("dlp", vals, [1] * 4, 0.5, alpha=0.05)
    assert owl.index(min(owl)) == 3 and owl.index(max(owl)) == 1  # most outliers: pruned least
    assert dlp.index(max(dlp)) == 3 and dlp.index(min(dlp)) == 1  # most important on average: pruned most
    assert max(owl) - min(owl) == pytest.approx(0.1) and max(dlp) - min(dlp) == pytest.approx(0.1)


def test_weighted_centre_by_hand():
    # Sizes 1 and 3: normalised 0, 1; weighted centre 0.75 -> 0.5 - 0.2 * (n - 0.75).
    got = allocate("owl", [0.0, 1.0], [1, 3], 0.5, lam=0.1)
    assert got == pytest.approx([0.65, 0.45], abs=1e-12)
    assert weighted_mean(got, [1, 3]) == pytest.approx(0.5, abs=1e-12)


def test_clamping_redistributes_by_hand():
    # DLP: base 0.75, 1.05 -> 1.05 clamps to 0.99; the other takes the excess: 0.81.
    assert allocate("dlp", [0.0, 1.0], [1, 1], 0.9) == pytest.approx([0.81, 0.99], abs=1e-9)
    # OWL at 5 %: base 0.13, -0.03 -> 0 and 0.10.
    assert allocate("owl", [0.0, 1.0], [1, 1], 0.05) == pytest.approx([0.10, 0.0], abs=1e-9)
    assert allocate("owl", [0.0, 1.0], [1, 1], 0.0) == pytest.approx([0.0, 0.0], abs=1e-9)
    assert allocate("dlp", [0.0, 1.0], [1, 1], 0.99) == pytest.approx([0.99, 0.99], abs=1e-9)


@pytest.mark.parametrize("kind", ["owl", "dlp"])
@pytest.mark.parametrize("target", [0.02, 0.3, 0.5, 0.7, 0.95])
def test_weighted_target_and_bounds_with_unequal_sizes(kind, target):
    rng = random.Random(int(target * 100))
    values = [rng.uniform(0, 10) for _ in range(24)]
    params = [rng.choice([1_000, 50_000, 400_000, 2_000_000]) for _ in range(24)]
    got = allocate(kind, values, params, target, lam=0.2, alpha=0.3)  # wide: clamping active at the ends
    assert len(got) == 24
    assert all(0.0 <= s <= 0.99 for s in got)
    assert abs(weighted_mean(got, params) - target) < 1e-3 * 0.1  # within 0.01 pp (required: 0.1 pp)
    unweighted = sum(got) / len(got)
    if target == 0.5:
        assert abs(unweighted - target) > 1e-3  # the weighted centring really differs here


def test_flat_profile_gives_uniform():
    for kind in ("owl", "dlp"):
        assert allocate(kind, [4.2] * 5, [1, 2, 3, 4, 5], 0.6) == pytest.approx([0.6] * 5, abs=1e-12)
    assert allocate("owl", [1.0, 2.0], [1, 1], 0.6, lam=0.0) == pytest.approx([0.6, 0.6], abs=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [
        (("svd", [1.0], [1], 0.5), "unknown allocation"),
        (("owl", [1.0, 2.0], [1], 0.5), "one value and one parameter count"),
        (("owl", [], [], 0.5), "one value"),
        (("owl", [1.0, float("nan")], [1, 1], 0.5), "finite"),
        (("owl", [1.0, 2.0], [1, 0], 0.5), "positive"),
        (("owl", [1.0, 2.0], [1, 1], 1.0), "outside"),
        (("owl", [1.0, 2.0], [1, 1], -0.1), "outside"),
        (("dlp", [1.0, 2.0], [1, 1], 0.995), "outside"),
    ],
)
def test_impossible_requests_raise(args, match):
    with pytest.raises(ValueError, match=match):
        allocate(*args)


def test_negative_spread_raises():
    with pytest.raises(ValueError, match="lam and alpha"):
        allocate("owl", [1.0, 2.0], [1, 1], 0.5, lam=-0.1)
    with pytest.raises(ValueError, match="lam and alpha"):
        allocate("dlp", [1.0, 2.0], [1, 1], 0.5, alpha=float("nan"))

"""Thresholds from sketches equal the intended quantiles: exactly on hand-built data that sits
on bin edges, within the stated bounds otherwise; WINA/CHESS weighting. Computed as the product
computes them: `SiteThresholds` of a site (no weights for TEAL, WINA's column norms as the scale,
CHESS's mean |up output| as channel weights, turned into channel thresholds by
`channel_thresholds`)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsekit.activation.plan import Site
from sparsekit.activation.sites import SiteThresholds
from sparsekit.activation.sketch import ActivationSketch
from sparsekit.activation.thresholds import channel_thresholds, column_norms


def _sketch(x: torch.Tensor, **grid) -> ActivationSketch:
    s = ActivationSketch(x.shape[-1], **grid)
    s.update(x)
    return s


def _site(channels: int) -> Site:
    return Site(name="model.layers.0.mlp.down_proj", where="input", role="mlp_out", layer=0,
                point="model.layers.0.mlp.down_proj", params=channels)


def teal_site(sketch: ActivationSketch, sparsity: float):
    """A TEAL site's threshold (one on |x|): the calibration facts, after checking the tensor."""
    t, scale, res = SiteThresholds(_site(sketch.channels), sketch)(sparsity)
    assert t.dtype == torch.float32 and t.dim() == 0 and scale is None
    assert t.item() == pytest.approx(res.value, rel=1e-6)
    return res


def wina_site(sketch: ActivationSketch, norms: torch.Tensor, sparsity: float):
    """A WINA site's threshold on |x_i| * n_i; the scale saved with it is the norms themselves."""
    t, scale, res = SiteThresholds(_site(sketch.channels), sketch, scale=norms)(sparsity)
    assert t.dim() == 0 and torch.equal(scale, norms.float())
    return res


def _exact_quantile(z: torch.Tensor, s: float) -> float:
    """ceil(s * N)-th smallest value (0 for s = 0)."""
    flat = z.reshape(-1).double().sort().values
    k = math.ceil(s * flat.numel() - 1e-9)
    return 0.0 if k == 0 else float(flat[k - 1])


def test_exact_quantile_when_values_are_bin_edges():
    # every value is a power of two (a bin top): the sketch's CDF is exact at each of them, so a
    # target equal to the fraction of entries <= such a value gives exactly that value
    g = torch.Generator().manual_seed(0)
    exps = torch.randint(-6, 6, (40, 3), generator=g)
    signs = torch.randint(0, 2, (40, 3), generator=g) * 2 - 1
    x = signs * torch.pow(2.0, exps.float())
    sk = _sketch(x)
    values = x.abs().unique()
    for v in values.tolist():
        k = int((x.abs() <= v).sum())
        s = k / x.numel()
        th = teal_site(sk, s)
        assert th.value == v == _exact_quantile(x.abs(), s)
        assert th.lower == th.upper == th.predicted == s
    # in between (s = 0.1 is not such a fraction): interpolated inside the bin, within bounds
    th = teal_site(sk, 0.1)
    zeroed = float((x.abs() <= th.value).double().mean())
    assert th.lower <= zeroed <= th.upper and th.lower < 0.1 < th.upper


def test_zero_atom_and_zero_target():
    x = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, -1.0], [2.0, 0.5]])  # 4 of 8 exact zeros
    sk = _sketch(x)
    for s in (0.0, 0.3, 0.5):
        th = teal_site(sk, s)
        assert th.value == 0.0 and th.lower == th.upper == 0.5
    th = teal_site(sk, 0.75)  # 6th smallest |x| is 1.0, a bin edge
    assert th.value == 1.0 and th.predicted == 0.75


@pytest.mark.parametrize("dist", ["normal", "laplace", "lognormal-scales"])
def test_random_data_within_stated_bounds(dist):
    g = torch.Generator().manual_seed(1)
    if dist == "normal":
        x = torch.randn(3000, 64, generator=g)
    elif dist == "laplace":
        u = torch.rand(3000, 64, generator=g) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    else:
        x = torch.randn(3000, 64, generator=g) * torch.exp(2 * torch.randn(64, generator=g))
    sk = _sketch(x)
    for s in (0.1, 0.25, 0.4, 0.5, 0.65, 0.8, 0.95):
        th = teal_site(sk, s)
        zeroed = float((x.abs().double() <= th.value).double().mean())
        assert th.lower <= zeroed <= th.upper
        assert abs(zeroed - s) < 0.003, (s, zeroed)
        exact = _exact_quantile(x.abs(), s)
        ratio = th.value / exact
        assert 2 ** -0.25 <= ratio <= 2 ** 0.25  # same bin: within one bin ratio (m = 2)


def test_wina_quantile_of_scaled_importance():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2000, 48, generator=g) * (torch.rand(48, generator=g) * 3 + 0.1)
    w = torch.randn(32, 48, generator=g) * (torch.rand(48, generator=g) + 0.05)
    w[:, 5] = 0.0  # a fully pruned column: its input never matters
    n = column_norms(w)
    assert torch.allclose(n.double(), w.double().pow(2).sum(0).sqrt())
    sk = _sketch(x)
    for s in (0.25, 0.5, 0.65):
        th = wina_site(sk, n, s)
        imp = x.abs().double() * n.double()
        zeroed = float((imp <= th.value).double().mean())
        assert th.lower <= zeroed <= th.upper and abs(zeroed - s) < 0.004
        # doubling every norm doubles tau (the importance scales)
        th2 = wina_site(sk, 2 * n, s)
        assert th2.value == pytest.approx(2 * th.value, rel=1e-12)
    # at target 0 the threshold is 0 and the dead column counts as zeroed already
    zero = wina_site(sk, n, 0.0)
    assert zero.value == 0.0 and zero.lower >= 1 / 48


def test_chess_channel_thresholds():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1500, 16, generator=g)
    mu = torch.rand(16, generator=g) + 0.5
    mu[3] = 0.0
    site = _site(16)
    t, scale, res = SiteThresholds(site, _sketch(a), channel_weights=mu)(0.5)
    assert scale is None and torch.isinf(t[3]) and t.dtype == torch.float32 and t.shape == (16,)
    keep = mu > 0
    assert torch.allclose(t[keep].double(), res.value / mu[keep].double(), rtol=1e-6)
    assert torch.equal(t, channel_thresholds(res.value, mu))
    zeroed = float((a.abs() <= t).double().mean())  # |a_i| <= tau / mu_i
    assert res.lower <= zeroed <= res.upper and abs(zeroed - 0.5) < 0.01
    # plain MLP: mu = 1, one threshold for every channel = TEAL's
    t1, _, res1 = SiteThresholds(site, _sketch(a), channel_weights=torch.ones(16))(0.5)
    assert torch.all(t1 == t1[0]) and res1.value == teal_site(_sketch(a), 0.5).value
    assert t1[0].item() == pytest.approx(res1.value, rel=1e-6)


def test_channel_thresholds_by_hand():
    t = channel_thresholds(2.0, torch.tensor([1.0, 4.0, 0.0, 0.5]))
    assert t.dtype == torch.float32 and t.tolist() == [2.0, 0.5, float("inf"), 4.0]
    assert torch.equal(channel_thresholds(0.0, torch.tensor([2.0, 0.0])), torch.tensor([0.0, float("inf")]))


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        teal_site(ActivationSketch(3), 0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        teal_site(_sketch(torch.ones(2, 3)), 1.5)
    with pytest.raises(ValueError, match="histogram"):
        s = ActivationSketch(3, histogram=False)
        s.update(torch.ones(2, 3))
        teal_site(s, 0.5)
    with pytest.raises(ValueError, match="3 channels"):
        wina_site(_sketch(torch.ones(2, 3)), torch.ones(4), 0.5)
    from sparsekit.errors import NumericalError

    bad = torch.ones(2, 3)
    bad[0, 1] = float("nan")
    with pytest.raises(NumericalError, match="NaN"):
        teal_site(_sketch(bad), 0.5)


def test_float64_bins_agree_with_the_sketch_binning():
    from sparsekit.activation.thresholds import Mixture

    sk = _sketch(torch.randn(10, 4))
    mix = Mixture(sk, None)
    edges = sk.edges().float()
    up = edges.view(torch.int32).add(1).view(torch.float32)
    vals = torch.cat([edges, up, torch.rand(500) * 100, torch.tensor([0.0, 1e-40, 3e38])]).contiguous()
    assert torch.equal(mix.bins(vals.double()), sk.bin_index(vals).long())

"""Thresholds for a target activation sparsity, from an `ActivationSketch` (pure tensor math).

Runtime rule (all methods): per token, input i is kept iff ``importance_i > threshold_i``
(strict), else zeroed; exact zeros are therefore always "zeroed". The zeroed fraction of a
threshold t on data z is ``F(t) = #{z <= t} / #z``.

Quantile convention: the threshold for target sparsity s is the smallest t >= 0 with
``F_hat(t) >= s``, where ``F_hat`` is the sketch's CDF: exact at every bin edge and linear
inside a bin (an atom at 0 for exact zeros). Exact case: when s * N is the number of entries at
or below a bin edge (e.g. data whose values are bin edges, such as powers of two, at s = k / N
for such a count k), the threshold is that edge, the exact empirical quantile (the
ceil(s * N)-th smallest value), and ``lower == upper == s``. Otherwise:

* value bound: the exact quantile and t lie in the same bin, so for a single channel (TEAL
  pools channels with equal scales, so the same holds) ``t / q* in [2**-(2**-m), 2**(2**-m)]``
  outside the first bin (0, 2**min_exp] and the overflow bin (a factor 1.19 for m = 2);
* rank bound: the fraction of calibration entries actually zeroed by t lies in
  ``[lower, upper]`` of the returned `Threshold` (the cumulative counts at the edges of the bin
  each channel's t falls in; lower == upper when t is an edge). With linear interpolation the
  achieved fraction is typically far closer to s than this bound (tests measure it).

Importance per method (n_i, mu_i are per-channel weights, i the input channel):

* TEAL:  ``|x_i|``; one scalar per linear input (q, k and v share their input and threshold).
* WINA:  ``|x_i| * n_i`` with ``n_i = ||W[:, i]||_2`` the column norm of *this* linear's weight,
  one scalar ``tau`` per linear (q, k, v get separate thresholds and masks). The WINA reference
  code uses the column norm for two matrices only (k and gate; all others get n = 1); sparsekit
  applies it to every sparsified linear.
* CHESS: ``|a_i| * mu_i`` on the FFN activation ``a`` (the output of the gate activation, which
  zeroes the matching down_proj inputs) with ``mu_i = E|up_i|`` (mean |up_proj output| of
  channel i); channel-wise thresholds ``t_i = tau / mu_i`` (``mu_i = 0`` gives ``t_i = inf``:
  the channel is always dropped, it contributes 0 anyway). Plain MLPs (no up projection) have
  ``mu = 1``: one threshold on the fc2 input. Attention: TEAL-style scalars on the q_proj and
  o_proj inputs only (k and v stay dense).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from sparsekit.activation.sketch import ActivationSketch, check_finite_sketch

__all__ = [
    "Mixture",
    "Threshold",
    "channel_thresholds",
    "check_sparsity",
    "solve_threshold",
    "column_norms",
]


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold and what the sketch says it does on the calibration data.

    value: the threshold (on importance); predicted: the interpolated zeroed fraction;
    lower, upper: guaranteed bounds on the exact zeroed fraction of the calibration entries.
    """
    value: float
    predicted: float
    lower: float
    upper: float


def check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return s


class Mixture:
    """Piecewise-linear CDFs of every channel of a sketch, with per-channel importance scales."""

    def __init__(self, sketch: ActivationSketch, scale: torch.Tensor | None):
        if not sketch.has_histogram:
            raise ValueError("thresholds need a sketch with a histogram (histogram=True)")
        if sketch.ntokens == 0:
            raise ValueError("the activation sketch is empty: calibrate on some tokens first")
        check_finite_sketch(sketch)
        counts = sketch.counts.detach().to("cpu", torch.float64)          # [C, B]
        self.c, self.b = counts.shape
        cum = torch.cat([torch.zeros(self.c, 1, dtype=torch.float64), counts.cumsum(1)], 1)  # [C, B+1]
        self.cum_t = cum[:, :-1].T.contiguous()                            # [B, C]: count below bin k
        self.counts_t = counts.T.contiguous()                              # [B, C]
        edges = sketch.edges()                                              # lower edges [B]
        self.lower = edges
        self.upper_shared = torch.cat([edges[1:], edges[-1:]])             # top of last bin: per channel
        self.top = torch.maximum(sketch.max_abs.detach().to("cpu", torch.float64), edges[-1])
        self.m = 2**sketch.mantissa_bits
        self.min_exp = sketch.min_exp
        self.n = float(sketch.ntokens)
        if scale is None:
            self.scale = None
        else:
            sc = scale.detach().reshape(-1).to("cpu", torch.float64)
            if sc.numel() != self.c:
                raise ValueError(f"scale has {sc.numel()} entries, the sketch has {self.c} channels")
            if bool((sc < 0).any()) or not bool(torch.isfinite(sc).all()):
                raise ValueError("scale must be finite and non-negative")
            self.scale = sc

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        """Bin of each float64 value t >= 0 on the sketch grid (right-closed bins), exactly:
        ``t = mant * 2**exp`` (frexp), octave ``exp - 1``, position ``(2 * mant - 1) * 2**m`` within
        it (exact in float64); an exact edge belongs to the bin below. Elementwise (no search)."""
        mant, exp = torch.frexp(t)
        pos = (mant * 2 - 1) * self.m
        r = pos.floor()
        k = 2 + (exp.to(torch.int64) - 1 - self.min_exp) * self.m + r.to(torch.int64) - (pos == r).to(torch.int64)
        k = k.clamp_(1, self.b - 1)
        k = torch.where(torch.isinf(t), torch.full_like(k, self.b - 1), k)
        return k.masked_fill_(t == 0, 0)

    def per_channel(self, tau, with_bins: bool = False):
        """(interpolated, lower, upper) counts of entries with importance <= tau, per channel:
        [C] each for a float tau, [P, C] for a [P] tensor of taus; with_bins adds each channel's
        bin (the same shape)."""
        taus = torch.as_tensor(tau, dtype=torch.float64).reshape(-1, 1)          # [P, 1]
        if self.scale is None:
            t = taus.expand(-1, self.c)
            dead = None
        else:
            dead = self.scale == 0
            t = torch.where(dead, 0.0, taus / torch.where(dead, 1.0, self.scale))
        k = self.bins(t.contiguous())                                      # t in (L_k, U_k]
        cum = self.cum_t.gather(0, k)
        cnt = self.counts_t.gather(0, k)
        lo = self.lower[k]
        up = torch.where(k == self.b - 1, self.top, self.upper_shared[k])
        width = up - lo
        frac = torch.where(width > 0, (t - lo) / torch.where(width > 0, width, 1.0), 1.0).clamp_(0.0, 1.0)
        exact = frac >= 1.0
        est = cum + cnt * frac
        upper = cum + cnt
        lower = torch.where(exact, upper, cum)
        if dead is not None:
            est, lower, upper = (torch.where(dead, self.n, v) for v in (est, lower, upper))
        if dead is not None:
            k = torch.where(dead, -1, k)
        out = (est, lower, upper, k) if with_bins else (est, lower, upper)
        if not isinstance(tau, torch.Tensor):
            out = tuple(v[0] for v in out)
        return out

    def snap(self, tau: float) -> int:
        """Bits of the nearest bin edge (importance units) at or above tau if it lies within
        float rounding of tau (1e-12 relative), else of tau: interpolated CDF values a few ulps
        below an edge can round up to the edge's exact count."""
        t = torch.full((self.c,), tau, dtype=torch.float64)
        sc = self.scale if self.scale is not None else torch.ones(self.c, dtype=torch.float64)
        live = sc > 0
        t = t / torch.where(live, sc, 1.0)
        k = self.bins(t)
        up = torch.where(k == self.b - 1, self.top, self.upper_shared[k]) * sc
        up = up[live & (up >= tau)]
        if up.numel():
            edge = float(up.min())
            if edge <= tau * (1 + 1e-12):
                return _f64_bits(edge)
        return _f64_bits(tau)

    def total(self, tau: float) -> float:
        return float(self.per_channel(tau)[0].sum())


    def max_importance(self) -> float:
        top = self.top if self.scale is None else self.top * self.scale
        return float(top.max())


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _f64_from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def _search(mix: Mixture, target: float) -> float:
    """Smallest float64 tau with ``total(tau) >= target`` (given ``total(0) < target``).

    Bisection on the ordered bit patterns of non-negative doubles (a geometric bisection, suited
    to values spanning decades) until every channel's tau / scale_i stays in one bin across the
    bracket; the pooled CDF is linear there, so tau is solved directly (then moved up by ulps if
    rounding left it a hair short). A target at an exact bin edge is bisected to the last bit."""
    lo, hi = 0, _f64_bits(mix.max_importance())          # total(lo) < target <= total(hi)
    f_lo, _, _, k_lo = mix.per_channel(0.0, with_bins=True)
    f_hi, _, _, k_hi = mix.per_channel(_f64_from_bits(hi), with_bins=True)
    f_lo, f_hi = float(f_lo.sum()), float(f_hi.sum())
    while hi - lo > 1:
        if torch.equal(k_lo, k_hi) and f_hi > f_lo:
            a, b = _f64_from_bits(lo), _f64_from_bits(hi)
            tau = min(b, max(a, a + (target - f_lo) * (b - a) / (f_hi - f_lo)))
            for _ in range(8):
                if tau > a and mix.total(tau) >= target:
                    return tau
                tau = math.nextafter(tau, math.inf)
            return b
        mid = (lo + hi) // 2
        est, _, _, k = mix.per_channel(_f64_from_bits(mid), with_bins=True)
        f = float(est.sum())
        if f >= target:
            hi, f_hi, k_hi = mid, f, k
        else:
            lo, f_lo, k_lo = mid, f, k
    return _f64_from_bits(hi)


def solve_threshold(mix: Mixture, sparsity: float) -> Threshold:
    """Smallest tau >= 0 with the pooled interpolated CDF >= sparsity (`_search`), snapped onto a
    bin edge within float rounding of it."""
    total = mix.n * mix.c
    target = sparsity * total
    if abs(target - round(target)) <= 1e-9 * total:  # s = k / N up to rounding: hit count k exactly
        target = float(round(target))
    if mix.total(0.0) >= target:
        tau = 0.0
    else:
        tau = _f64_from_bits(mix.snap(_search(mix, target)))
    est, lower, upper = mix.per_channel(tau)
    return Threshold(tau, float(est.sum()) / total, float(lower.sum()) / total, float(upper.sum()) / total)


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """WINA's ``n_i = ||W[:, i]||_2`` for a weight ``[out_features, in_features]``: float32 [in],
    accumulated in float64."""
    if weight.dim() != 2:
        raise ValueError(f"column_norms needs a 2-D weight, got shape {tuple(weight.shape)}")
    return torch.linalg.vector_norm(weight.detach().to(torch.float64), ord=2, dim=0).to(torch.float32)


def channel_thresholds(tau: float, weights: torch.Tensor) -> torch.Tensor:
    """CHESS's channel-wise thresholds ``t_i = tau / mu_i`` (float32 [C]) for the pooled threshold
    ``tau`` on ``|a_i| * mu_i``; ``mu_i = 0`` gives ``t_i = inf`` (the channel is always dropped:
    it contributes nothing anyway). The one CHESS threshold formula."""
    mu = weights.detach().reshape(-1).to("cpu", torch.float64)
    return torch.where(mu > 0, tau / torch.where(mu > 0, mu, 1.0), torch.full_like(mu, float("inf"))).to(torch.float32)



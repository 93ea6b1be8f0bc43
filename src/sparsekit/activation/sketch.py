"""A bounded-memory, mergeable sketch of the magnitudes of one activation tensor, per channel.

`ActivationSketch` is fed with the same tensors as `InputStats.update(x)` (``x: [..., C]``, any
float dtype) and keeps, for each of the C channels, a histogram of ``|x|`` on a fixed grid of
float-exponent bins, plus the per-channel maximum and sum of ``|x|``. Memory depends on C and
the grid only, never on the number of tokens seen.

Why per-channel histograms on one fixed log grid (the design choice):

* TEAL needs the quantile of ``|x|`` pooled over tokens and channels: the sum of the channel
  histograms.
* WINA needs the quantile of ``|x_i| * n_i`` with ``n_i = ||W[:, i]||_2`` known only later
  (possibly after weight pruning): channel i's histogram, rescaled by ``n_i``, is the histogram
  of its importance; the pooled distribution is the mixture of the rescaled channels.
* CHESS needs the quantile of ``|a_i| * mu_i`` with per-channel weights ``mu_i`` (another
  statistic): the same mixture with ``mu`` instead of ``n``.
* Fixed bins make ``merge`` an integer addition, so a merged sketch equals a single pass
  exactly, in any order (a data-dependent sketch such as t-digest or KLL would not).

Grid (``m`` = ``mantissa_bits``, exponents ``min_exp`` .. ``max_exp``), ``B = 3 + (max_exp -
min_exp) * 2**m`` bins per channel::

    bin 0       {0}                                   exact zeros (ReLU outputs, pruned inputs)
    bin 1       (0, 2**min_exp]
    bin k >= 2  (e_k, e_{k+1}],  e_k = 2**(min_exp + j) * (1 + r / 2**m),  k - 2 = j * 2**m + r
    bin B - 1   (2**max_exp, inf)                     overflow; its top is the channel max

Bins are closed on the right, matching the runtime rule "keep x_i iff importance > t": the
number of entries zeroed by a threshold equal to a bin edge is read off the histogram exactly.
The bin of a value is computed from the bits of its float32 value (``(bits - 1 - bits(lo)) >>
(23 - m)``): no logarithm, and every edge is an exact float32 number. Each octave holds ``2**m``
bins, so an edge ratio is at most ``2**(1/2**m)`` (1.19 for the default m = 2).

Error bound (see `sparsekit.activation.thresholds`): a threshold t that falls inside bin k of a
channel is within a factor ``e_{k+1} / e_k <= 2**(2**-m)`` of the exact empirical quantile, and
the fraction of calibration entries it zeroes lies between the cumulative counts at the two
edges of the straddled bin(s): the rank error is at most the mass of those bins, and is exact
when the threshold is an edge. Within a bin the CDF is interpolated linearly.

Memory: ``B`` int32 counts + a float32 max + a float64 sum per channel, 600 bytes with the
defaults (m = 2, 2**-20 .. 2**16, B = 147). Llama-3-8B (hidden 4096, intermediate 14336, 32
layers) with one sketch per distinct linear input (q/k/v shared, o, gate/up shared, down):
26,624 channels a layer, 16.0 MB a layer, 511 MB in all; adding CHESS's activation sketch
(14,336 channels a layer) gives 786 MB. A sketch without histogram (``histogram=False``) keeps
only max and sum (12 bytes a channel), enough for CHESS's per-channel mean |up output|.

Counts are int32: a sketch holds at most 2**31 - 1 tokens (`update` refuses more).
"""

from __future__ import annotations

import torch

from sparsekit.errors import NumericalError

__all__ = ["ActivationSketch", "check_finite_sketch", "sketch_bytes"]

_FORMAT_VERSION = 1
_MAX_TOKENS = 2**31 - 1
_CHUNK_ELEMENTS = 1 << 24  # entries binned per bincount call (bounds the temporary memory)


def sketch_bytes(channels: int, mantissa_bits: int = 2, min_exp: int = -20, max_exp: int = 16,
                 histogram: bool = True) -> int:
    """Bytes of one sketch's state (counts int32, max float32, sum float64)."""
    bins = 3 + (max_exp - min_exp) * 2**mantissa_bits if histogram else 0
    return channels * (4 * bins + 4 + 8)


class ActivationSketch:
    """Per-channel histogram of |x| on fixed float-exponent bins (module docstring).

    Args:
        channels: size of the last input dimension (C).
        mantissa_bits: m, ``2**m`` bins per octave (0..6).
        min_exp, max_exp: the regular bins cover ``(2**min_exp, 2**max_exp]``.
        histogram: False keeps only ``ntokens``, per-channel ``max_abs`` and ``abs_sum``.
        device: where the state lives; None follows the first `update` (CPU until then).
    """

    def __init__(self, channels: int, *, mantissa_bits: int = 2, min_exp: int = -20, max_exp: int = 16,
                 histogram: bool = True, device=None):
        if int(channels) <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        if not 0 <= int(mantissa_bits) <= 6:
            raise ValueError(f"mantissa_bits must be in 0..6, got {mantissa_bits}")
        if not -126 <= int(min_exp) < int(max_exp) <= 127:
            raise ValueError(f"need -126 <= min_exp < max_exp <= 127, got {min_exp}, {max_exp}")
        self.channels = int(channels)
        self.mantissa_bits = int(mantissa_bits)
        self.min_exp, self.max_exp = int(min_exp), int(max_exp)
        self.bins = 3 + (self.max_exp - self.min_exp) * 2**self.mantissa_bits
        if self.channels * self.bins >= 2**31:
            raise ValueError(f"{self.channels} channels x {self.bins} bins exceed the int32 bin index")
        self._pinned = device is not None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.ntokens = 0
        self._counts = (torch.zeros(self.channels, self.bins, dtype=torch.int32, device=dev)
                        if histogram else None)
        self._max = torch.zeros(self.channels, dtype=torch.float32, device=dev)
        self._sum = torch.zeros(self.channels, dtype=torch.float64, device=dev)

    # ------------------------------------------------------------------ state
    @property
    def has_histogram(self) -> bool:
        return self._counts is not None

    @property
    def device(self) -> torch.device:
        return self._max.device

    @property
    def counts(self) -> torch.Tensor:
        """[C, B] int32 per-channel bin counts (live state; read-only)."""
        if self._counts is None:
            raise ValueError("this sketch was built with histogram=False")
        return self._counts

    @property
    def max_abs(self) -> torch.Tensor:
        """[C] float32 largest |x| per channel (0 before any update)."""
        return self._max

    @property
    def abs_sum(self) -> torch.Tensor:
        """[C] float64 sum of |x| per channel."""
        return self._sum

    @property
    def mean_abs(self) -> torch.Tensor:
        """[C] float64 mean of |x| per channel over all tokens (zeros if empty)."""
        return self._sum / max(self.ntokens, 1)

    def config(self) -> dict:
        return {"mantissa_bits": self.mantissa_bits, "min_exp": self.min_exp, "max_exp": self.max_exp,
                "histogram": self.has_histogram}

    def nbytes(self) -> int:
        n = self._max.numel() * 4 + self._sum.numel() * 8
        return n + (self._counts.numel() * 4 if self._counts is not None else 0)

    def to(self, device) -> ActivationSketch:
        """Move the state to `device` (in place; returns self)."""
        dev = torch.device(device)
        self._max, self._sum = self._max.to(dev), self._sum.to(dev)
        if self._counts is not None:
            self._counts = self._counts.to(dev)
        return self

    def edges(self) -> torch.Tensor:
        """[B] float64: the lower edge of every bin (0 for bins 0 and 1), i.e. the bin tops
        shifted by one: bin k spans (edges[k], edges[k + 1]] for 1 <= k < B - 1; bin B - 1
        spans (edges[B - 1], max_abs]."""
        m = 2**self.mantissa_bits
        j = torch.arange(self.bins - 2, dtype=torch.float64)
        regular = torch.pow(2.0, self.min_exp + torch.div(j, m, rounding_mode="floor")) * (1 + (j % m) / m)
        return torch.cat([torch.zeros(2, dtype=torch.float64), regular])

    # ----------------------------------------------------------- accumulation
    def bin_index(self, a: torch.Tensor) -> torch.Tensor:
        """Bin of each non-negative float32 value ``a`` (int32, same shape, a new tensor).

        Positive values: ``((bits - bits(2**min_exp) - 1) >> (23 - m)) + 2`` clamped to
        [1, B - 1]; exact zeros (bits 0) go to bin 0 through ``min(index, bits)``, which leaves
        every positive value alone (its index is 1 whenever its bits can be below B)."""
        bits = a.view(torch.int32)
        lo = (self.min_exp + 127) << 23
        idx = bits - (lo + 1)
        idx.bitwise_right_shift_(23 - self.mantissa_bits).add_(2).clamp_(1, self.bins - 1)
        return torch.minimum(idx, bits, out=idx)

    def update(self, x: torch.Tensor) -> None:
        """Add one batch ``x: [..., channels]`` (any float dtype; NaN counts as overflow and makes
        the channel's max NaN, which threshold functions reject)."""
        if x.dim() == 0 or x.shape[-1] != self.channels:
            raise ValueError(f"ActivationSketch expects inputs with last dim {self.channels}, "
                             f"got shape {tuple(x.shape)}")
        x2 = x.detach().reshape(-1, self.channels)
        ntok = x2.shape[0]
        if ntok == 0:
            return
        if self.ntokens + ntok > _MAX_TOKENS:
            raise ValueError(f"ActivationSketch holds at most {_MAX_TOKENS} tokens (int32 counts)")
        if not self._pinned and self.ntokens == 0 and x2.device != self.device:
            self.to(x2.device)
        rows = max(1, _CHUNK_ELEMENTS // self.channels)
        offsets = None
        for start in range(0, ntok, rows):
            a = x2[start:start + rows].to(device=self.device, dtype=torch.float32).abs()
            torch.maximum(self._max, a.amax(dim=0), out=self._max)
            self._sum.add_(a.sum(dim=0))  # float32 within a chunk, float64 across chunks
            if self._counts is None:
                continue
            if offsets is None:  # channel i's bins start at i * B of the flat histogram
                offsets = torch.arange(self.channels, device=self.device, dtype=torch.int32) * self.bins
            flat = self.bin_index(a.contiguous()).add_(offsets).reshape(-1)
            hist = torch.bincount(flat, minlength=self.channels * self.bins)
            self._counts.add_(hist.view(self.channels, self.bins).to(torch.int32))
        self.ntokens += ntok

    def merge(self, other: ActivationSketch) -> None:
        """Fold `other` (another shard) into self: the same state as one pass over both."""
        if not isinstance(other, ActivationSketch) or other.channels != self.channels \
                or other.config() != self.config():
            raise ValueError("merge needs an ActivationSketch with the same channels and grid")
        if other.ntokens == 0:
            return
        if self.ntokens + other.ntokens > _MAX_TOKENS:
            raise ValueError(f"ActivationSketch holds at most {_MAX_TOKENS} tokens (int32 counts)")
        if not self._pinned and self.ntokens == 0:
            self.to(other.device)
        dev = self.device
        torch.maximum(self._max, other._max.to(dev), out=self._max)
        self._sum.add_(other._sum.to(dev))
        if self._counts is not None:
            self._counts.add_(other._counts.to(dev))
        self.ntokens += other.ntokens

    # --------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (safetensors-friendly): version, grid [m, min_exp, max_exp], ntokens,
        max_abs, abs_sum and (with a histogram) counts."""
        d = {
            "version": torch.tensor([_FORMAT_VERSION], dtype=torch.int64),
            "grid": torch.tensor([self.mantissa_bits, self.min_exp, self.max_exp], dtype=torch.int64),
            "ntokens": torch.tensor([self.ntokens], dtype=torch.int64),
            "max_abs": self._max.clone(),
            "abs_sum": self._sum.clone(),
        }
        if self._counts is not None:
            d["counts"] = self._counts.clone()
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device=None) -> ActivationSketch:
        """Rebuild from `state_dict()` output (unknown keys are ignored)."""
        missing = [k for k in ("grid", "ntokens", "max_abs", "abs_sum") if k not in d]
        if missing:
            raise ValueError(f"ActivationSketch state is missing keys: {', '.join(missing)}")
        version = int(d["version"].reshape(-1)[0]) if "version" in d else _FORMAT_VERSION
        if version > _FORMAT_VERSION:
            raise ValueError(f"ActivationSketch state has format version {version}; "
                             f"this sparsekit reads <= {_FORMAT_VERSION}")
        m, lo, hi = (int(v) for v in d["grid"].reshape(-1).tolist())
        mx = d["max_abs"].reshape(-1)
        counts = d.get("counts")
        s = cls(mx.numel(), mantissa_bits=m, min_exp=lo, max_exp=hi, histogram=counts is not None,
                device=device if device is not None else mx.device)
        s._pinned = device is not None
        if counts is not None and tuple(counts.shape) != (s.channels, s.bins):
            raise ValueError(f"ActivationSketch state: counts shape {tuple(counts.shape)} != "
                             f"({s.channels}, {s.bins})")
        if d["abs_sum"].numel() != s.channels:
            raise ValueError("ActivationSketch state: abs_sum and max_abs sizes differ")
        s.ntokens = int(d["ntokens"].reshape(-1)[0])
        s._max.copy_(mx)
        s._sum.copy_(d["abs_sum"].reshape(-1))
        if counts is not None:
            s._counts.copy_(counts)
        return s

    def __repr__(self) -> str:
        return (f"ActivationSketch(channels={self.channels}, ntokens={self.ntokens}, bins={self.bins}, "
                f"histogram={self.has_histogram}, device={self.device})")


def check_finite_sketch(sketch: ActivationSketch, what: str = "activation sketch") -> None:
    """Stop with a reason when a sketch saw NaN or inf."""
    if not bool(torch.isfinite(sketch.max_abs).all()):
        raise NumericalError(f"NaN or inf in the calibration activations of {what}: check the model "
                             "and the calibration data (e.g. run in float32)")

